//! The one interface every engine implements.

use crate::{RuntimeError, Tensor};

/// One loaded ONNX graph, run with named inputs. Sessions are `Send`, so a pipeline can move
/// to the thread that runs it (a server's worker, a binding that releases its caller).
pub trait Session: Send {
    /// Graph input names, in graph order.
    fn input_names(&self) -> &[String];
    /// Graph output names, in graph order.
    fn output_names(&self) -> &[String];
    /// Runs the graph; `inputs` must name every graph input once. Outputs come in graph order.
    fn run(&mut self, inputs: &[(&str, &Tensor)]) -> Result<Vec<Tensor>, RuntimeError>;
}

/// Orders named inputs as the graph lists them, refusing unknown or missing names.
pub(crate) fn in_graph_order<'a>(
    graph_inputs: &[String],
    inputs: &[(&str, &'a Tensor)],
) -> Result<Vec<&'a Tensor>, RuntimeError> {
    let expected = || graph_inputs.join(", ");
    if let Some((name, _)) = inputs
        .iter()
        .find(|(n, _)| !graph_inputs.iter().any(|g| g == n))
    {
        return Err(RuntimeError::UnknownInput {
            name: name.to_string(),
            expected: expected(),
        });
    }
    graph_inputs
        .iter()
        .map(|g| {
            inputs
                .iter()
                .find(|(n, _)| n == g)
                .map(|(_, t)| *t)
                .ok_or_else(|| RuntimeError::MissingInput {
                    name: g.clone(),
                    expected: expected(),
                })
        })
        .collect()
}
