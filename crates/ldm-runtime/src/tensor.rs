//! The plain tensors exchanged with every engine: a shape and a flat row-major buffer.

use crate::RuntimeError;

#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: TensorData,
}

impl Tensor {
    pub fn f32(shape: &[usize], data: Vec<f32>) -> Result<Self, RuntimeError> {
        Self::new(shape, TensorData::F32(data))
    }

    pub fn i64(shape: &[usize], data: Vec<i64>) -> Result<Self, RuntimeError> {
        Self::new(shape, TensorData::I64(data))
    }

    fn new(shape: &[usize], data: TensorData) -> Result<Self, RuntimeError> {
        let expected: usize = shape.iter().product();
        let got = match &data {
            TensorData::F32(v) => v.len(),
            TensorData::I64(v) => v.len(),
        };
        if expected != got {
            return Err(RuntimeError::ShapeMismatch {
                shape: shape.to_vec(),
                expected,
                got,
            });
        }
        Ok(Self {
            shape: shape.to_vec(),
            data,
        })
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn data(&self) -> &TensorData {
        &self.data
    }

    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            TensorData::F32(v) => Some(v),
            TensorData::I64(_) => None,
        }
    }
}
