//! `--device cpu|cuda|cuda:N`, checked against what libtorch can reach.

use tch::{Cuda, Device};

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("unknown device '{0}' (expected cpu, cuda or cuda:N)")]
    Unknown(String),
    #[error("device '{requested}' asked for, but libtorch sees {available} CUDA device(s); use --device cpu, or install a CUDA build of torch with scripts/setup.sh --gpu on a GPU machine")]
    Unavailable { requested: String, available: i64 },
}

pub fn parse_device(name: &str) -> Result<Device, DeviceError> {
    let index = match name.trim() {
        "cpu" => return Ok(Device::Cpu),
        "cuda" => 0,
        other => other
            .strip_prefix("cuda:")
            .and_then(|i| i.parse::<usize>().ok())
            .ok_or_else(|| DeviceError::Unknown(name.to_string()))?,
    };
    let available = Cuda::device_count();
    if index as i64 >= available {
        return Err(DeviceError::Unavailable {
            requested: name.to_string(),
            available,
        });
    }
    Ok(Device::Cuda(index))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Kind, Tensor};

    #[test]
    fn libtorch_multiplies_a_non_square_matrix() {
        let a = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).reshape([2, 3]);
        let b = Tensor::from_slice(&[1.0f32, 0.0, -1.0, 2.0, 0.5, 1.0]).reshape([3, 2]);
        let c = a.matmul(&b);
        assert_eq!(c.size(), [2, 2]);
        let got: Vec<f32> = c.reshape([-1]).try_into().unwrap();
        assert_eq!(got, [0.5, 7.0, 2.0, 16.0]);
        let g = Tensor::ones([3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        (&g * &g).sum(Kind::Float).backward();
        let grad: Vec<f32> = g.grad().try_into().unwrap();
        assert_eq!(grad, [2.0, 2.0, 2.0]);
    }

    #[test]
    fn devices_parse_and_unknown_names_are_refused() {
        assert_eq!(parse_device("cpu").unwrap(), Device::Cpu);
        let err = parse_device("tpu").unwrap_err().to_string();
        assert_eq!(err, "unknown device 'tpu' (expected cpu, cuda or cuda:N)");
        if Cuda::device_count() == 0 {
            let err = parse_device("cuda").unwrap_err().to_string();
            assert!(err.contains("libtorch sees 0 CUDA device(s)"), "{err}");
        }
    }
}
