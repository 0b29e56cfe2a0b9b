//! Self-attention over positions in chunks of queries (`SlicedAttention`): a `Scan` whose body
//! attends one chunk, so that the scores of only that many queries are held at once.

use ldm_core::manifest::{DType, SlicedAttention};
use ldm_nn::ops::{scaled_dot_product, Result};
use ldm_nn::{Dim, Ops};
use tract_onnx::pb;

use super::{OnnxOps, Value};
use crate::proto::{self, Attr};

impl OnnxOps<'_> {
    /// A subgraph (the body of a `Scan`) of the nodes `body` emits from `inputs` to its
    /// results, gathered apart from the graph's. Initializers stay in the graph, where the
    /// subgraph sees them as outer-scope values, as it sees every value of the graph.
    pub(super) fn subgraph<const N: usize>(
        &mut self,
        inputs: &[&Value],
        body: impl FnOnce(&mut Self) -> Result<[Value; N]>,
    ) -> Result<(pb::GraphProto, [Value; N])> {
        let outer = std::mem::take(&mut self.nodes);
        let result = body(self);
        let nodes = std::mem::replace(&mut self.nodes, outer);
        let outputs = result?;
        let info = |v: &Value| proto::shapeless_value_info(&v.name, v.dtype);
        let graph = pb::GraphProto {
            name: self.fresh("graph"),
            node: nodes,
            input: inputs.iter().map(|v| info(v)).collect(),
            output: outputs.iter().map(info).collect(),
            ..Default::default()
        };
        Ok((graph, outputs))
    }

    /// Attention of `q` [B, heads, n, d] a chunk of queries at a time: `sliced.chunk` of them
    /// when n is above `sliced.above`, else all n in one chunk. The queries are padded to a
    /// multiple of the chunk, a `Scan` runs over the chunks, and the padding's rows are cut
    /// off. The chunk is worked out in the graph (a `Where` on n), since one graph serves
    /// every size; engines that know the shapes when they optimise (tract) fold it, and
    /// inline the one-chunk `Scan` of small sizes into plain attention.
    pub(super) fn chunked_attention(
        &mut self,
        q: &Value,
        kt: &Value,
        v: &Value,
        head_dim: usize,
        sliced: SlicedAttention,
    ) -> Result<Value> {
        let shape = self.emit("Shape", &[&q.name], vec![], 1, DType::Int64);
        let queries = self.narrow(&shape, 0, 2, 1)?;
        let above = self.const_i64(&[sliced.above as i64]);
        // A bool, which `Value` has no type for: only the `Where` below reads it.
        let large = self.fresh("Greater");
        self.nodes.push(proto::node(
            "Greater",
            large.clone(),
            &[&queries.name, &above.name],
            &[&large],
            vec![],
        ));
        let chunk_len = self.const_i64(&[sliced.chunk as i64]);
        let chunk = self.emit(
            "Where",
            &[&large, &chunk_len.name, &queries.name],
            vec![],
            1,
            DType::Int64,
        );
        let over = self.binary("Mod", &queries, &chunk);
        let short = self.binary("Sub", &chunk, &over);
        let pad = self.binary("Mod", &short, &chunk);
        // ONNX pads: the begins of all four axes, then the ends; only the queries' end pads.
        let begins = self.const_i64(&[0; 6]);
        let end = self.const_i64(&[0]);
        let pads = self.concat(&[&begins, &pad, &end], 0)?;
        let padded = self.emit("Pad", &[&q.name, &pads.name], vec![], 4, q.dtype);
        // [B, heads, chunks, chunk, d]: 0 copies a dimension, -1 is inferred.
        let (leading, tail) = (
            self.const_i64(&[0, 0, -1]),
            self.const_i64(&[head_dim as i64]),
        );
        let chunked_shape = self.concat(&[&leading, &chunk, &tail], 0)?;
        let chunks = self.emit(
            "Reshape",
            &[&padded.name, &chunked_shape.name],
            vec![],
            5,
            q.dtype,
        );
        let [largest, slice] = [("largest", 0), ("query_chunk", 4)].map(|(name, rank)| Value {
            name: self.fresh(name),
            rank,
            dtype: q.dtype,
        });
        // The loop carries one state that nothing outside reads: the largest output so far.
        // A body output that also feeds a body node stays in the loop; without one, tract's
        // optimiser hoists the body's last nodes (the product with V, then the softmax) out of
        // it to run on every chunk at once, which holds all the scores again
        // (`declutter_pull_batcheable_output`, tract-core 0.23.9).
        let (body, [_, out]) = self.subgraph(&[&largest, &slice], |o| {
            let out = scaled_dot_product(o, &slice, kt, v, head_dim, None)?;
            let all = vec![("keepdims", Attr::Int(0))];
            let chunk_max = o.emit("ReduceMax", &[&out.name], all, 0, out.dtype);
            Ok([o.binary("Max", &largest, &chunk_max), out])
        })?;
        let lowest = self.scalar(f32::NEG_INFINITY, q.dtype);
        let attrs = vec![
            ("body", Attr::Graph(body)),
            ("num_scan_inputs", Attr::Int(1)),
            ("scan_input_axes", Attr::Ints(vec![2])),
            ("scan_output_axes", Attr::Ints(vec![2])),
        ];
        let name = self.fresh("Scan");
        let (state, scanned) = (format!("{name}_largest"), name.clone());
        self.nodes.push(proto::node(
            "Scan",
            name,
            &[&lowest.name, &chunks.name],
            &[&state, &scanned],
            attrs,
        ));
        let scanned = Value {
            name: scanned,
            rank: 5,
            dtype: out.dtype,
        };
        let joined = self.reshape(
            &scanned,
            &[Dim::Keep, Dim::Keep, Dim::Infer, Dim::Fixed(head_dim)],
        )?;
        let (start, axis) = (self.const_i64(&[0]), self.const_i64(&[2]));
        let inputs = [joined.name.as_str(), &start.name, &queries.name, &axis.name];
        Ok(self.emit("Slice", &inputs, vec![], 4, joined.dtype))
    }
}
