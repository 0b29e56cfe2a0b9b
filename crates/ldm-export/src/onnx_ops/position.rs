//! The coordinate grid of a feature map, worked out in the graph from its shape (`Shape`,
//! `Range`, `Expand`), since one graph serves every size; engines that know the shapes when
//! they optimise (tract) fold it to a constant.

use ldm_core::manifest::DType;
use ldm_nn::ops::Result;
use ldm_nn::{NnError, Ops};

use super::{OnnxOps, Value};
use crate::proto;

impl OnnxOps<'_> {
    /// [1, 2, H, W] f32 for `like` [N, C, H, W]: x then y of the pixel centres in (-1, 1).
    pub(super) fn grid_of(&mut self, like: &Value) -> Result<Value> {
        if like.rank < 2 {
            return Err(NnError::Shape {
                op: "coordinate_grid",
                message: format!("a rank-{} value has no two spatial axes", like.rank),
            });
        }
        let shape = self.emit("Shape", &[&like.name], vec![], 1, DType::Int64);
        let h = self.narrow(&shape, 0, like.rank - 2, 1)?;
        let w = self.narrow(&shape, 0, like.rank - 1, 1)?;
        let xs = self.cell_centres(&w)?;
        let ys = self.cell_centres(&h)?;
        let row = self.const_i64(&[1, 1, 1, -1]);
        let column = self.const_i64(&[1, 1, -1, 1]);
        let xs = self.emit("Reshape", &[&xs.name, &row.name], vec![], 4, DType::Float32);
        let ys = self.emit(
            "Reshape",
            &[&ys.name, &column.name],
            vec![],
            4,
            DType::Float32,
        );
        let ones = self.const_i64(&[1, 1]);
        let target = self.concat(&[&ones, &h, &w], 0)?;
        let xs = self.emit(
            "Expand",
            &[&xs.name, &target.name],
            vec![],
            4,
            DType::Float32,
        );
        let ys = self.emit(
            "Expand",
            &[&ys.name, &target.name],
            vec![],
            4,
            DType::Float32,
        );
        self.concat(&[&xs, &ys], 1)
    }

    /// (2i + 1) / n - 1 for i in 0..n, from `n` as a one-element int64 tensor: the centres of
    /// n equal cells of (-1, 1).
    fn cell_centres(&mut self, n: &Value) -> Result<Value> {
        let count = self.emit("Squeeze", &[&n.name], vec![], 0, DType::Int64);
        let zero = self.initializer("zero", DType::Int64, &[], proto::i64_bytes(&[0]));
        let one = self.initializer("one", DType::Int64, &[], proto::i64_bytes(&[1]));
        let index = self.emit(
            "Range",
            &[&zero.name, &count.name, &one.name],
            vec![],
            1,
            DType::Int64,
        );
        let index = self.cast(&index, DType::Float32);
        let n = self.cast(n, DType::Float32);
        let doubled = self.scale(&index, 2.0)?;
        let one = self.scalar(1.0, DType::Float32);
        let odd = self.binary("Add", &doubled, &one);
        let fraction = self.binary("Div", &odd, &n);
        Ok(self.binary("Sub", &fraction, &one))
    }
}
