//! Cross-validation of our learnt model (`engine::learn::model`) on the TRAINING split only,
//! to choose its tokenizer, unsure band and scores without looking at the evaluation split.
//! Two ways of cutting spam-1 and easy-ham-1, each message scored by a model trained on the
//! rest, through the same tokenizer the teacher uses:
//!
//! - **5 folds** (by file name order, every 5th file): prints, for candidate cutoffs, how many
//!   spam and ham fall in each band, then a summary line at SpamBayes' band (0.9 / 0.2).
//! - **time-ordered** (train on the first 80 % of each directory by file name, test on the
//!   last 20 %): a proxy for drift, since the evaluation split is later mail than the training
//!   split; a summary line at the same band.
//!
//! Each summary line also gives the mean log loss and the scores of the HTML ham apart (the
//! kind of ham the evaluation's hard ham is; easy-ham-1 has few). Last, the cost of the
//! tokenizer per message (URL extraction included, decoding apart: the scanner decodes once
//! for every check), averaged over both directories. With `CV_MISSES=1`, every spam scored
//! below the spam cutoff is printed with its strongest clues.
//!
//!     cargo run --release --example learnt-cv -- bench/detection/.cache/corpus/spam-1 \
//!         bench/detection/.cache/corpus/easy-ham-1

use std::time::{Duration, Instant};

use maildistiller::engine::learn::model::{Model, hash};
use maildistiller::engine::learn::tokens::tokenize;
use maildistiller::engine::scan::check::{LearnAs, extract_urls};

const FOLDS: usize = 5;
/// SpamBayes' band, the one the `learnt` scanner ships with.
const SPAM_CUT: f64 = 0.9;
const HAM_CUT: f64 = 0.2;

/// A message as the model sees it: its token hashes, and whether it has an HTML part.
struct Msg {
    tokens: Vec<String>,
    hashes: Vec<u64>,
    html: bool,
}

/// Every message's tokens, and the time spent in the tokenizer (URLs included).
fn read(dir: &str, spent: &mut Duration) -> Vec<Msg> {
    use maildistiller::engine::scan::{budget::Budget, decode::decode};
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("a corpus directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    let limits = maildistiller::config::policy::ScanLimits::default();
    files
        .iter()
        .filter_map(|f| std::fs::read(f).ok())
        .map(|raw| {
            // As `engine::learn::tokens_of` does it, with the tokenizer timed apart.
            let mut budget = Budget::new(&limits, Instant::now());
            let d = decode(&raw, &mut budget, limits.max_text_bytes.0 as usize);
            let start = Instant::now();
            let urls = extract_urls(&d.text, &d.html);
            let t = tokenize(&d, &urls);
            *spent += start.elapsed();
            Msg {
                hashes: t.iter().map(|t| hash(t)).collect(),
                tokens: t,
                html: !d.html.is_empty(),
            }
        })
        .collect()
}

/// Scores of the messages `test` picks (by index and count), by a model trained on the
/// others; with the HTML ham's scores apart.
fn run(
    spam: &[Msg],
    ham: &[Msg],
    test: &dyn Fn(usize, usize) -> bool,
) -> (Vec<(bool, f64)>, Vec<f64>) {
    let mut m = Model::default();
    for (_, t) in spam
        .iter()
        .enumerate()
        .filter(|(i, _)| !test(*i, spam.len()))
    {
        m.apply(LearnAs::Spam, true, &t.hashes);
    }
    for (_, t) in ham.iter().enumerate().filter(|(i, _)| !test(*i, ham.len())) {
        m.apply(LearnAs::Ham, true, &t.hashes);
    }
    let (mut ps, mut html_ham) = (Vec::new(), Vec::new());
    for (i, t) in spam
        .iter()
        .enumerate()
        .filter(|(i, _)| test(*i, spam.len()))
    {
        let sc = m.score(&t.hashes);
        if std::env::var_os("CV_MISSES").is_some() && sc.p < SPAM_CUT {
            let clues: Vec<String> = sc
                .clues
                .iter()
                .take(25)
                .map(|(k, p)| format!("{}={p:.2}", t.tokens[*k]))
                .collect();
            println!("missed spam #{i} p={:.3}: {}", sc.p, clues.join(" "));
        }
        ps.push((true, sc.p));
    }
    for (_, t) in ham.iter().enumerate().filter(|(i, _)| test(*i, ham.len())) {
        let p = m.score(&t.hashes).p;
        ps.push((false, p));
        if t.html {
            html_ham.push(p);
        }
    }
    (ps, html_ham)
}

fn share(ps: &[(bool, f64)], spam: bool, f: impl Fn(f64) -> bool) -> f64 {
    let n = ps.iter().filter(|(s, _)| *s == spam).count().max(1) as f64;
    100.0 * ps.iter().filter(|(s, p)| *s == spam && f(*p)).count() as f64 / n
}

/// Mean cross-entropy (bits), `p` clipped to 0.001..=0.999: lower is better, and it moves
/// before a message crosses a cutoff.
fn log_loss(ps: &[(bool, f64)]) -> f64 {
    let sum: f64 = ps
        .iter()
        .map(|(s, p)| {
            let p = p.clamp(0.001, 0.999);
            -(if *s { p } else { 1.0 - p }).log2()
        })
        .sum();
    sum / ps.len().max(1) as f64
}

fn summary(name: &str, (ps, html_ham): &(Vec<(bool, f64)>, Vec<f64>)) {
    print!(
        "{name}: spam >= {SPAM_CUT} {:.1} %, spam <= {HAM_CUT} {:.1} %, ham >= {SPAM_CUT} {:.2} %, ham unsure {:.2} %, log loss {:.3}",
        share(ps, true, |p| p >= SPAM_CUT),
        share(ps, true, |p| p <= HAM_CUT),
        share(ps, false, |p| p >= SPAM_CUT),
        share(ps, false, |p| p > HAM_CUT && p < SPAM_CUT),
        log_loss(ps),
    );
    if html_ham.is_empty() {
        println!();
        return;
    }
    println!(
        "; HTML ham ({}): >= {SPAM_CUT} {}, unsure {}, mean p {:.3}",
        html_ham.len(),
        html_ham.iter().filter(|p| **p >= SPAM_CUT).count(),
        html_ham
            .iter()
            .filter(|p| **p > HAM_CUT && **p < SPAM_CUT)
            .count(),
        html_ham.iter().sum::<f64>() / html_ham.len() as f64,
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mut spent = Duration::ZERO;
    let (spam, ham) = (read(&args[1], &mut spent), read(&args[2], &mut spent));
    let folds = (0..FOLDS)
        .map(|fold| run(&spam, &ham, &|i, _| i % FOLDS == fold))
        .fold((Vec::new(), Vec::new()), |mut all, (ps, h)| {
            all.0.extend(ps);
            all.1.extend(h);
            all
        });
    let ps = &folds.0;
    println!("{} spam, {} ham, {FOLDS} folds", spam.len(), ham.len());
    println!(
        "| spam_cutoff | ham_cutoff | spam >= cut | spam <= ham_cut | ham >= cut | ham in unsure | ham <= ham_cut |"
    );
    println!("|---|---|---|---|---|---|---|");
    for sc in [0.8, 0.9, 0.95, 0.99] {
        for hc in [0.05, 0.1, 0.2, 0.3] {
            println!(
                "| {sc} | {hc} | {:.1} % | {:.1} % | {:.2} % | {:.1} % | {:.1} % |",
                share(ps, true, |p| p >= sc),
                share(ps, true, |p| p <= hc),
                share(ps, false, |p| p >= sc),
                share(ps, false, |p| p > hc && p < sc),
                share(ps, false, |p| p <= hc),
            );
        }
    }
    summary("5 folds", &folds);
    summary(
        "time-ordered 80/20",
        &run(&spam, &ham, &|i, n| i * 5 >= n * 4),
    );
    let n = (spam.len() + ham.len()).max(1) as u32;
    println!(
        "tokenizer: {:.0} µs per message",
        (spent / n).as_secs_f64() * 1e6
    );
}
