//! `ldm profile`: where tract spends the time of one graph, node by node in its optimised
//! plan, summed by operator: the map of what to change in the exported graphs.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use ldm_core::manifest::GraphRole;
use ldm_runtime::{Bundle, TractSession};

#[derive(Args)]
pub struct ProfileArgs {
    /// The exported bundle.
    #[arg(long, default_value = "export/emoji-text")]
    bundle: PathBuf,
    /// The graph: unet, decoder, encoder, text_encoder or class_embedder.
    #[arg(long, default_value = "unet")]
    graph: String,
    /// Rows of the batch (2 is one guided image).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    batch: u32,
    /// Image side in pixels (default: the bundle's resolution).
    #[arg(long, value_parser = clap::value_parser!(u32).range(8..=1024))]
    size: Option<u32>,
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Timed runs, averaged (after one untimed run).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    runs: u32,
    /// Nodes listed, slowest first.
    #[arg(long, default_value_t = 20)]
    top: usize,
}

pub fn run(a: ProfileArgs) -> anyhow::Result<()> {
    let bundle = Bundle::load(&a.bundle)
        .with_context(|| format!("cannot open the bundle {}", a.bundle.display()))?;
    let role = [
        GraphRole::Unet,
        GraphRole::Decoder,
        GraphRole::Encoder,
        GraphRole::TextEncoder,
        GraphRole::ClassEmbedder,
        GraphRole::Planner,
    ]
    .into_iter()
    .find(|r| r.as_str() == a.graph)
    .with_context(|| {
        format!(
            "unknown graph '{}' (expected unet, decoder, encoder, text_encoder, class_embedder or planner)",
            a.graph
        )
    })?;
    let side = a.size.map_or(bundle.manifest.resolution, |s| s as usize);
    let inputs = crate::bench::graph_inputs(&bundle, role, a.batch as usize, side)?;
    let named: Vec<(&str, &ldm_runtime::Tensor)> =
        inputs.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut session = TractSession::with_threads(&bundle.graph_path(role)?, a.threads)?;
    let nodes = session.profile(&named, a.runs as usize)?;

    let total: f64 = nodes.iter().map(|n| n.seconds).sum();
    println!(
        "{} of {}, batch {}, {side}x{side} pixels, tract on {} thread(s): {:.2} ms over {} nodes",
        a.graph,
        a.bundle.display(),
        a.batch,
        a.threads,
        total * 1e3,
        nodes.len()
    );
    let mut by_op: Vec<(String, f64, usize)> = Vec::new();
    for n in &nodes {
        match by_op.iter_mut().find(|(op, _, _)| *op == n.op) {
            Some(entry) => {
                entry.1 += n.seconds;
                entry.2 += 1;
            }
            None => by_op.push((n.op.clone(), n.seconds, 1)),
        }
    }
    by_op.sort_by(|a, b| b.1.total_cmp(&a.1));
    println!("\nby operator:");
    for (op, seconds, count) in &by_op {
        println!(
            "  {op:<28} {:>9.3} ms  {:>5.1} %  {count:>4} nodes",
            seconds * 1e3,
            100.0 * seconds / total
        );
    }
    let mut slowest = nodes.clone();
    slowest.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
    println!("\nslowest nodes:");
    for n in slowest.iter().take(a.top) {
        println!("  {:>9.3} ms  {:<20} {}", n.seconds * 1e3, n.op, n.node);
    }
    Ok(())
}
