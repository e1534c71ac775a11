//! Cross-validation of our learnt model (`engine::learn::model`) on the TRAINING split only,
//! to choose its tokenizer, unsure band and scores without looking at the evaluation split:
//! spam-1 and easy-ham-1 are cut into 5 folds (by file name order, every 5th file); each fold
//! is scored by a model trained on the other four, through the same tokenizer the teacher uses.
//! Prints, for candidate cutoffs, how many spam and ham fall in each band.
//!
//!     cargo run --release --example learnt-cv -- bench/detection/.cache/corpus/spam-1 \
//!         bench/detection/.cache/corpus/easy-ham-1

use maildistiller::engine::learn::model::{Model, hash};
use maildistiller::engine::learn::tokens_of;
use maildistiller::engine::scan::check::LearnAs;

const FOLDS: usize = 5;

fn read(dir: &str) -> Vec<Vec<u64>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("a corpus directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    files
        .iter()
        .filter_map(|f| std::fs::read(f).ok())
        .map(|raw| tokens_of(&raw).iter().map(|t| hash(t)).collect())
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (spam, ham) = (read(&args[1]), read(&args[2]));
    let mut ps: Vec<(bool, f64)> = Vec::new();
    for fold in 0..FOLDS {
        let mut m = Model::default();
        for (_, t) in spam.iter().enumerate().filter(|(i, _)| i % FOLDS != fold) {
            m.apply(LearnAs::Spam, true, t);
        }
        for (_, t) in ham.iter().enumerate().filter(|(i, _)| i % FOLDS != fold) {
            m.apply(LearnAs::Ham, true, t);
        }
        for (_, t) in spam.iter().enumerate().filter(|(i, _)| i % FOLDS == fold) {
            ps.push((true, m.score(t).p));
        }
        for (_, t) in ham.iter().enumerate().filter(|(i, _)| i % FOLDS == fold) {
            ps.push((false, m.score(t).p));
        }
    }
    let (ns, nh) = (spam.len() as f64, ham.len() as f64);
    println!("{} spam, {} ham, {FOLDS} folds", spam.len(), ham.len());
    println!(
        "| spam_cutoff | ham_cutoff | spam >= cut | spam <= ham_cut | ham >= cut | ham in unsure | ham <= ham_cut |"
    );
    println!("|---|---|---|---|---|---|---|");
    for sc in [0.8, 0.9, 0.95, 0.99] {
        for hc in [0.05, 0.1, 0.2, 0.3] {
            let c = |spam: bool, f: &dyn Fn(f64) -> bool| {
                ps.iter().filter(|(s, p)| *s == spam && f(*p)).count() as f64
            };
            println!(
                "| {sc} | {hc} | {:.1} % | {:.1} % | {:.2} % | {:.1} % | {:.1} % |",
                100.0 * c(true, &|p| p >= sc) / ns,
                100.0 * c(true, &|p| p <= hc) / ns,
                100.0 * c(false, &|p| p >= sc) / nh,
                100.0 * c(false, &|p| p > hc && p < sc) / nh,
                100.0 * c(false, &|p| p <= hc) / nh,
            );
        }
    }
}
