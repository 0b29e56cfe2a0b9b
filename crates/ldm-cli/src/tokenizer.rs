//! `ldm tokenizer train`: a WordPiece vocabulary from the captions of an image folder.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use ldm_core::TextTokenizer;
use ldm_data::ImageFolder;

#[derive(Args)]
pub struct TokenizerArgs {
    #[command(subcommand)]
    command: TokenizerCommand,
}

#[derive(Subcommand)]
enum TokenizerCommand {
    /// Train on the `text` column of an image folder and write tokenizer.json.
    Train {
        /// Image folder with captions (metadata.jsonl).
        #[arg(long)]
        data: PathBuf,
        /// Vocabulary size, special tokens included (the model's conditioning.vocab_size).
        #[arg(long, default_value_t = 2048)]
        vocab_size: usize,
        /// Where to write tokenizer.json.
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn run(args: TokenizerArgs) -> anyhow::Result<()> {
    let TokenizerCommand::Train {
        data,
        vocab_size,
        out,
    } = args.command;
    anyhow::ensure!(
        (8..=1_000_000).contains(&vocab_size),
        "invalid --vocab-size {vocab_size} (expected 8 to 1000000)"
    );
    let folder = ImageFolder::open(&data)?.require_text()?;
    let captions: Vec<String> = folder.records().filter_map(|r| r.text.clone()).collect();
    let tokenizer = TextTokenizer::train(captions.iter(), vocab_size)?;
    tokenizer.save(&out)?;
    let longest = captions
        .iter()
        .map(|c| tokenizer.token_count(c))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .max()
        .unwrap_or(0);
    println!(
        "wrote {} ({} tokens, from {} captions; the longest caption is {longest} tokens)",
        out.display(),
        tokenizer.vocab_size(),
        captions.len()
    );
    Ok(())
}
