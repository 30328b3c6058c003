//! The teacher search's report: the ranked table (Markdown and JSON), the plot of student gain
//! against teacher cost and teacher accuracy (SVG), how often teacher accuracy and student gain
//! disagree, and the winner as a teacher config file ready for `retort train`.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::data::parquet_io::write_text;
use crate::release::run::RunConfig;
use crate::search::space::Candidate;
use crate::search::teacher::{Evaluated, HoldoutGain, SearchReport};

/// How often ranking candidates by their teacher's accuracy disagrees with ranking them by the
/// gain their teacher gives a student, over the candidates of one rung.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Disagreement {
    /// Which accuracy: the teacher's zero-shot AUC on the target, or its own on the source.
    pub accuracy: String,
    pub rung: usize,
    pub candidates: usize,
    /// Pairs whose teachers differ in accuracy and whose gains differ.
    pub pairs: usize,
    /// Pairs the two orders rank the other way round.
    pub discordant: usize,
    /// Of those, pairs whose gains differ by more than twice the standard error of the
    /// difference: disagreements the noise of the proxy students does not explain.
    pub discordant_beyond_noise: usize,
    /// Kendall's tau between accuracy and gain over the counted pairs.
    pub tau: f64,
    /// The candidate with the most accurate teacher, and its place by gain (1 = best).
    pub most_accurate: usize,
    pub most_accurate_gain_rank: usize,
    /// The candidate with the best gain, and its teacher's place by accuracy.
    pub best_gain: usize,
    pub best_gain_accuracy_rank: usize,
}

/// Disagreement at the rung with the most evaluations (every candidate's first), by `accuracy`.
pub fn disagreement(
    evaluations: &[Evaluated],
    name: &str,
    accuracy: impl Fn(&Evaluated) -> f64,
) -> Option<Disagreement> {
    let rung = (0..=evaluations.iter().map(|e| e.rung).max()?)
        .max_by_key(|&r| (evaluations.iter().filter(|e| e.rung == r).count(), usize::MAX - r))?;
    let at: Vec<&Evaluated> = evaluations.iter().filter(|e| e.rung == rung).collect();
    if at.len() < 2 {
        return None;
    }
    let (mut pairs, mut discordant, mut beyond) = (0, 0, 0);
    for (i, a) in at.iter().enumerate() {
        for b in &at[i + 1..] {
            let da = accuracy(a) - accuracy(b);
            let dg = a.gain - b.gain;
            // Candidates that share a teacher tie on accuracy: no order to disagree with.
            if da.abs() < 1e-9 || dg == 0.0 {
                continue;
            }
            pairs += 1;
            if da.signum() != dg.signum() {
                discordant += 1;
                if dg.abs() > 2.0 * (a.gain_se.powi(2) + b.gain_se.powi(2)).sqrt() {
                    beyond += 1;
                }
            }
        }
    }
    let rank_of =
        |c: &Evaluated, key: &dyn Fn(&Evaluated) -> f64| 1 + at.iter().filter(|o| key(o) > key(c)).count();
    let gain = |e: &Evaluated| e.gain;
    let most_accurate = *at.iter().max_by(|a, b| accuracy(a).total_cmp(&accuracy(b)))?;
    let best = *at.iter().max_by(|a, b| a.gain.total_cmp(&b.gain))?;
    Some(Disagreement {
        accuracy: name.to_string(),
        rung,
        candidates: at.len(),
        pairs,
        discordant,
        discordant_beyond_noise: beyond,
        tau: if pairs == 0 { 0.0 } else { (pairs as f64 - 2.0 * discordant as f64) / pairs as f64 },
        most_accurate: most_accurate.candidate,
        most_accurate_gain_rank: rank_of(most_accurate, &gain),
        best_gain: best.candidate,
        best_gain_accuracy_rank: rank_of(best, &accuracy),
    })
}

fn list(v: &[usize]) -> String {
    if v.is_empty() {
        return "none".into();
    }
    v.iter().map(usize::to_string).collect::<Vec<_>>().join("-")
}

/// A candidate's choices, named as the ranked table's columns are.
fn choices(c: &Candidate) -> [(&'static str, String); 9] {
    [
        ("embeddings", c.embedding_dim.to_string()),
        ("towers", list(&c.towers)),
        ("interaction", list(&c.interaction)),
        ("task towers", list(&c.task_hidden)),
        ("masked", c.mask_probability.to_string()),
        ("reads", left_out(c)),
        ("trains", source_tasks(c)),
        ("epochs", c.epochs.to_string()),
        ("distils", c.distilled_heads.join("+")),
    ]
}

fn describe(c: &Candidate) -> String {
    choices(c).iter().map(|(name, value)| format!("{name} {value}")).collect::<Vec<_>>().join(", ")
}

fn left_out(c: &Candidate) -> String {
    if c.left_out_features.is_empty() {
        "every feature".into()
    } else {
        format!("all but {}", c.left_out_features.join("+"))
    }
}

fn source_tasks(c: &Candidate) -> String {
    if c.source_tasks.is_empty() { "every task".into() } else { c.source_tasks.join("+") }
}

impl SearchReport {
    /// Every candidate's evaluation at the highest rung it reached, best first (higher rung,
    /// then higher gain); candidates never evaluated are left out.
    pub fn ranked(&self) -> Vec<&Evaluated> {
        let mut top: Vec<&Evaluated> = Vec::new();
        for e in &self.evaluations {
            match top.iter_mut().find(|t| t.candidate == e.candidate) {
                Some(t) if t.rung < e.rung => *t = e,
                Some(_) => {}
                None => top.push(e),
            }
        }
        top.sort_by(|a, b| {
            b.rung.cmp(&a.rung).then(b.gain.total_cmp(&a.gain)).then(a.candidate.cmp(&b.candidate))
        });
        top
    }

    /// Total time of every candidate's evaluations.
    fn cost_of(&self, candidate: usize) -> f64 {
        self.evaluations.iter().filter(|e| e.candidate == candidate).map(|e| e.cost_s).sum()
    }

    /// Teacher accuracy against proxy gain; in a sweep, against holdout gain too.
    pub fn disagreements(&self) -> Vec<Disagreement> {
        let mut out = Vec::new();
        let mut judged = vec![("proxy gain", self.evaluations.clone())];
        if self.sweep && !self.holdout.is_empty() {
            // The same teachers, each scored by its student's holdout gain.
            let holdout = self
                .evaluations
                .iter()
                .filter_map(|e| {
                    let h = self.holdout.iter().find(|h| h.candidate == e.candidate)?;
                    Some(Evaluated { gain: h.gain, gain_se: h.gain_se, ..e.clone() })
                })
                .collect();
            judged.push(("holdout gain", holdout));
        }
        for (gain, evaluations) in judged {
            for (accuracy, key) in [
                (
                    "zero-shot AUC on the target",
                    (|e: &Evaluated| e.teacher_zero_shot_auc) as fn(&Evaluated) -> f64,
                ),
                ("own AUC on the source", |e: &Evaluated| e.teacher_source_auc),
            ] {
                out.extend(disagreement(&evaluations, &format!("{accuracy}, against {gain}"), key));
            }
        }
        out
    }

    pub fn markdown(&self) -> String {
        let s = &self.search;
        let o = &self.schedule;
        let skipped =
            o.trials.iter().filter(|t| t.note.as_deref().is_some_and(|n| n.starts_with("skipped"))).count();
        let failed =
            o.trials.iter().filter(|t| t.note.as_deref().is_some_and(|n| n.starts_with("failed"))).count();
        let mut out = String::from("# Teacher search\n\n");
        if self.sweep {
            out.push_str(&format!(
                "Brute-force sweep: every one of the {} points of the space, each teacher trained for its whole \
                 schedule; {:.0} s for the evaluations, {:.0} s for the holdout measurements.\n",
                self.candidates.len(),
                o.spent_s,
                self.holdout_s
            ));
        } else {
            out.push_str(&format!(
                "{} candidates; successive halving (eta {}, {} rungs, the top rung a teacher's whole schedule), \
                 {} evaluation(s) side by side; budget {:.0} s, spent {:.0} s: {:.0} s tuning and running the \
                 control, then {:.0} s over {} evaluations ({skipped} skipped for the budget, {failed} failed); \
                 the winner's holdout measurement took {:.0} s more.\n",
                self.candidates.len(),
                s.eta,
                s.rungs,
                self.workers,
                s.budget_s,
                self.control_s + o.spent_s,
                self.control_s,
                o.spent_s,
                self.evaluations.len(),
                self.holdout_s
            ));
        }
        out.push_str(&format!(
            "Source: {} teacher training rows. Target: {} training rows (the last {} for validation), {} holdout \
             rows. Proxy students: {} paired seed(s), each tuned by the student config's grid, as is the control \
             (chosen: learning rate {}, weight decay {}, {} epoch(s)).\n",
            self.rows_source_train,
            self.rows_target_train,
            self.rows_target_validation,
            self.rows_target_holdout,
            s.proxy_seeds,
            self.control_learning_rate,
            self.control_weight_decay,
            self.control_epochs
        ));

        if let Some(w) = self.winner {
            out.push_str(&format!("\n## Winner: candidate {w}\n\n{}.\n", describe(&self.candidates[w])));
            if let Some(h) = self.holdout.iter().find(|h| h.candidate == w) {
                out.push_str(&holdout_section(h));
            }
        }

        out.push_str(
            "\n## Candidates, ranked\n\nBy the highest rung reached, then the proxy gain there (mean validation AUC \
             over every task, minus the control's, ± paired standard error).\n\n\
             | rank | # | embeddings | towers | interaction | task towers | masked | reads | trains | epochs | distils | \
             rung | teacher | of its run | teacher train s | teacher multiply-adds | teacher source AUC | \
             teacher zero-shot AUC | proxy gain | cost s |\n\
             | ---: | ---: | ---: | --- | --- | --- | ---: | --- | --- | ---: | --- | ---: | --- | ---: | ---: | ---: | \
             ---: | ---: | ---: | ---: |\n",
        );
        for (rank, e) in self.ranked().into_iter().enumerate() {
            let c = &self.candidates[e.candidate];
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {:.0}% | {:.1} | {} | {:.4} | {:.4} | {:+.4} ± {:.4} | {:.1} |\n",
                rank + 1,
                e.candidate,
                choices(c).map(|(_, v)| v).join(" | "),
                e.rung,
                e.teacher,
                e.teacher_fraction * 100.0,
                e.teacher_train_s,
                e.teacher_multiply_adds,
                e.teacher_source_auc,
                e.teacher_zero_shot_auc,
                e.gain,
                e.gain_se,
                self.cost_of(e.candidate)
            ));
        }

        if self.sweep && !self.holdout.is_empty() {
            out.push_str(&format!(
                "\n## Holdout gains\n\nEvery candidate's student on the holdout, {} paired seeds, against the tuned \
                 control and against the control at the config's own hyperparameters.\n\n\
                 | # | candidate | gain vs tuned control | gain vs untuned control |\n| ---: | --- | ---: | ---: |\n",
                s.final_seeds
            ));
            let mut sorted: Vec<&HoldoutGain> = self.holdout.iter().collect();
            sorted.sort_by(|a, b| b.gain.total_cmp(&a.gain));
            for h in sorted {
                out.push_str(&format!(
                    "| {} | {} | {:+.4} ± {:.4} | {:+.4} ± {:.4} |\n",
                    h.candidate,
                    describe(&self.candidates[h.candidate]),
                    h.gain,
                    h.gain_se,
                    h.gain_untuned,
                    h.gain_untuned_se
                ));
            }
        }

        out.push_str("\n## Teacher accuracy against student gain\n\n");
        let ds = self.disagreements();
        if ds.is_empty() {
            out.push_str("Too few candidates were evaluated at one rung to compare the two orders.\n");
        }
        for d in ds {
            out.push_str(&format!(
                "By the teacher's {}, over the {} candidates of rung {}: {} of {} pairs ({:.0}%) are ranked the other \
                 way round, {} of them by more than twice the standard error of the difference \
                 (Kendall's tau {:+.2}). The most accurate teacher (candidate {}) gives the {} best student gain; \
                 the best student gain (candidate {}) comes from the {} most accurate teacher.\n\n",
                d.accuracy,
                d.candidates,
                d.rung,
                d.discordant,
                d.pairs,
                100.0 * d.discordant as f64 / d.pairs.max(1) as f64,
                d.discordant_beyond_noise,
                d.tau,
                d.most_accurate,
                ordinal(d.most_accurate_gain_rank),
                d.best_gain,
                ordinal(d.best_gain_accuracy_rank),
            ));
        }

        if !self.sweep {
            out.push_str(
                "## Every evaluation\n\n| # | rung | resource | teacher | proxy gain | cost s | note |\n\
                 | ---: | ---: | ---: | --- | ---: | ---: | --- |\n",
            );
            for t in &o.trials {
                let e = self.evaluations.iter().find(|e| e.candidate == t.candidate && e.rung == t.rung);
                out.push_str(&format!(
                    "| {} | {} | {} | {} | {} | {:.1} | {} |\n",
                    t.candidate,
                    t.rung,
                    t.resource,
                    e.map_or("–".to_string(), |e| e.teacher.clone()),
                    t.score.map_or("–".to_string(), |g| format!("{g:+.4}")),
                    t.cost_s,
                    t.note.as_deref().unwrap_or("")
                ));
            }
        }
        out
    }

    /// The winner's teacher config, for `retort train --data <source>`, with where it came from.
    pub fn teacher_config(&self) -> Option<String> {
        let w = self.winner?;
        let c = &self.candidates[w];
        let gain = self.holdout.iter().find(|h| h.candidate == w).map_or(String::new(), |h| {
            format!("# Holdout gain over the tuned control: {:+.4} ± {:.4}.\n", h.gain, h.gain_se)
        });
        Some(format!(
            "# The teacher retort teacher-search chose (candidate {w}): {}.\n{gain}\
             # Distil its labels into the student's tasks {} through auxiliary heads (see student.toml).\n{}",
            describe(c),
            c.distilled_heads.join(", "),
            c.teacher_config(self.search.teacher_batch_size, self.search.teacher_learning_rate)
        ))
    }

    /// `student`, distilling the winner's heads through auxiliary heads with the learning rate
    /// weight decay and epochs its search chose.
    pub fn student_config(&self, student: &RunConfig) -> Option<String> {
        let w = self.winner?;
        let e = self.ranked().into_iter().find(|e| e.candidate == w)?;
        let mut config = student.clone();
        config.distill = student.distill.for_heads(&self.candidates[w].distilled_heads);
        config.train.learning_rate = e.learning_rate;
        config.train.weight_decay = e.weight_decay;
        config.train.epochs = e.epochs;
        let text = toml::to_string(&config).ok()?;
        Some(format!(
            "# The student of retort teacher-search's winner (candidate {w}), with its tuned hyperparameters;\n\
             # train it on the target with the winner's teacher labels (--labels).\n{text}"
        ))
    }

    /// Two scatter panels of proxy gain (± standard error) per candidate at its highest rung:
    /// against the teacher's training time, and against its zero-shot accuracy on the target.
    pub fn svg(&self) -> String {
        let points = self.ranked();
        let panel = |x0: f64, title: &str, key: &dyn Fn(&Evaluated) -> f64, fmt: &dyn Fn(f64) -> String| {
            scatter(x0, title, &points, key, fmt, self.winner)
        };
        format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"900\" height=\"380\" font-family=\"sans-serif\" font-size=\"12\">\n\
             <text x=\"20\" y=\"20\" font-size=\"14\">Proxy student gain over the tuned control (± SE), by teacher; darker = higher rung; ringed = winner</text>\n{}{}</svg>\n",
            panel(0.0, "teacher training time (s)", &|e| e.teacher_train_s, &|v| format!("{v:.0}")),
            panel(450.0, "teacher zero-shot AUC on the target", &|e| e.teacher_zero_shot_auc, &|v| format!(
                "{v:.3}"
            )),
        )
    }
}

/// What `retort teacher-search --out` writes.
#[derive(Serialize)]
struct Json<'a> {
    #[serde(flatten)]
    report: &'a SearchReport,
    disagreement: Vec<Disagreement>,
}

/// Writes `report.md`, `report.json`, `report.svg` and, when there is a winner, `teacher.toml`
/// and `student.toml` (the student config distilling its heads with the chosen hyperparameters)
/// into `out`, each whole or not at all; returns the paths written.
pub fn write(report: &SearchReport, student: &RunConfig, out: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out)?;
    let json = serde_json::to_string_pretty(&Json { report, disagreement: report.disagreements() })
        .map_err(std::io::Error::other)?;
    let mut files = vec![
        (out.join("report.md"), report.markdown()),
        (out.join("report.json"), json),
        (out.join("report.svg"), report.svg()),
    ];
    if let (Some(teacher), Some(student)) = (report.teacher_config(), report.student_config(student)) {
        files.push((out.join("teacher.toml"), teacher));
        files.push((out.join("student.toml"), student));
    }
    for (path, text) in &files {
        write_text(path, text)?;
    }
    Ok(files.into_iter().map(|(p, _)| p).collect())
}

fn ordinal(n: usize) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

fn holdout_section(h: &HoldoutGain) -> String {
    let mut out = format!(
        "\nOn the holdout, {} paired seeds (teacher {}), each task's AUC:\n\n\
         | task | distilled | control (tuned) | student | gain |\n| --- | --- | ---: | ---: | ---: |\n",
        h.seeds, h.teacher
    );
    for t in &h.tasks {
        out.push_str(&format!(
            "| {} | {} | {:.4} | {:.4} | {:+.4} ± {:.4} |\n",
            t.task,
            if t.distilled { "yes" } else { "no" },
            t.control_auc,
            t.student_auc,
            t.gain,
            t.gain_se
        ));
    }
    let holds = h.gain - 2.0 * h.gain_se > 0.0;
    let only_untuned = !holds && h.gain_untuned - 2.0 * h.gain_untuned_se > 0.0;
    out.push_str(&format!(
        "\nMean over tasks: {:+.4} ± {:.4} against the control tuned by the same grid; {:+.4} ± {:.4} against the \
         control at the config's own hyperparameters. {}\n",
        h.gain,
        h.gain_se,
        h.gain_untuned,
        h.gain_untuned_se,
        if holds {
            "The gain holds against the tuned control (more than two standard errors): knowledge from the teacher."
        } else if only_untuned {
            "The gain vanishes against the tuned control: regularisation, not knowledge."
        } else {
            "The gain is within two standard errors of zero against the tuned control: no knowledge shown."
        }
    ));
    out
}

fn scatter(
    x0: f64,
    title: &str,
    points: &[&Evaluated],
    key: &dyn Fn(&Evaluated) -> f64,
    fmt: &dyn Fn(f64) -> String,
    winner: Option<usize>,
) -> String {
    let (left, right, top, bottom) = (x0 + 60.0, x0 + 430.0, 40.0, 320.0);
    let range = |v: Vec<f64>| {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if !lo.is_finite() {
            (0.0, 1.0)
        } else if hi - lo < 1e-12 {
            (lo - 0.5, hi + 0.5)
        } else {
            let pad = (hi - lo) * 0.08;
            (lo - pad, hi + pad)
        }
    };
    let (xlo, xhi) = range(points.iter().map(|e| key(e)).collect());
    let (ylo, yhi) =
        range(points.iter().flat_map(|e| [e.gain - e.gain_se, e.gain + e.gain_se]).chain([0.0]).collect());
    let x = |v: f64| left + (right - left) * (v - xlo) / (xhi - xlo);
    let y = |v: f64| bottom - (bottom - top) * (v - ylo) / (yhi - ylo);
    let mut out = format!(
        "<rect x=\"{left}\" y=\"{top}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#999\"/>\n\
         <line x1=\"{left}\" x2=\"{right}\" y1=\"{y0:.1}\" y2=\"{y0:.1}\" stroke=\"#bbb\" stroke-dasharray=\"4 3\"/>\n\
         <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{title}</text>\n",
        right - left,
        bottom - top,
        (left + right) / 2.0,
        bottom + 34.0,
        y0 = y(0.0),
    );
    for k in 0..=4 {
        let (vx, vy) = (xlo + (xhi - xlo) * k as f64 / 4.0, ylo + (yhi - ylo) * k as f64 / 4.0);
        out.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{vy:+.3}</text>\n",
            x(vx),
            bottom + 16.0,
            fmt(vx),
            left - 6.0,
            y(vy) + 4.0
        ));
    }
    let top_rung = points.iter().map(|e| e.rung).max().unwrap_or(0).max(1) as f64;
    for e in points {
        let (px, py) = (x(key(e)), y(e.gain));
        let shade = (200.0 - 170.0 * e.rung as f64 / top_rung) as u8;
        out.push_str(&format!(
            "<line x1=\"{px:.1}\" x2=\"{px:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#888\"/>\n\
             <circle cx=\"{px:.1}\" cy=\"{py:.1}\" r=\"5\" fill=\"rgb({shade},{shade},230)\"{}><title>candidate {} (rung {}): gain {:+.4} ± {:.4}, {}</title></circle>\n",
            y(e.gain - e.gain_se),
            y(e.gain + e.gain_se),
            if winner == Some(e.candidate) { " stroke=\"#cc3311\" stroke-width=\"3\"" } else { "" },
            e.candidate,
            e.rung,
            e.gain,
            e.gain_se,
            fmt(key(e)),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(candidate: usize, zero_shot: f64, gain: f64, se: f64) -> Evaluated {
        Evaluated {
            candidate,
            rung: 0,
            teacher: format!("teacher-{candidate}/1"),
            teacher_fraction: 0.1,
            teacher_train_s: 1.0 + candidate as f64,
            teacher_multiply_adds: 1000,
            teacher_source_auc: 0.7,
            teacher_zero_shot_auc: zero_shot,
            gain,
            gain_se: se,
            learning_rate: 0.01,
            weight_decay: 0.0,
            epochs: 3,
            cost_s: 2.0,
        }
    }

    #[test]
    fn counts_the_pairs_accuracy_and_gain_order_differently() {
        // Accuracy order 3 > 2 > 1 > 0; gain order 0 > 2 > 1 > 3 (3 has the most accurate teacher
        // and the worst gain). Discordant pairs: (0,1) (0,2) (0,3) (1,3) (2,3); concordant (1,2).
        let evals = [
            eval(0, 0.60, 0.030, 0.001),
            eval(1, 0.62, 0.010, 0.001),
            eval(2, 0.64, 0.020, 0.001),
            eval(3, 0.66, 0.000, 0.020),
        ];
        let d = disagreement(&evals, "zero-shot", |e| e.teacher_zero_shot_auc).unwrap();
        assert_eq!((d.pairs, d.discordant), (6, 5));
        // Against 3, whose gain is noisy (SE 0.02), no gap exceeds 2 × 0.02: only (0,1), (0,2).
        assert_eq!(d.discordant_beyond_noise, 2);
        assert!((d.tau - (1.0 - 5.0) / 6.0).abs() < 1e-12, "{}", d.tau);
        assert_eq!((d.most_accurate, d.most_accurate_gain_rank), (3, 4));
        assert_eq!((d.best_gain, d.best_gain_accuracy_rank), (0, 4));
    }

    #[test]
    fn teachers_tied_on_accuracy_are_not_counted() {
        let evals = [eval(0, 0.6, 0.01, 0.0), eval(1, 0.6, 0.02, 0.0), eval(2, 0.7, 0.03, 0.0)];
        let d = disagreement(&evals, "zero-shot", |e| e.teacher_zero_shot_auc).unwrap();
        assert_eq!((d.pairs, d.discordant), (2, 0));
        assert_eq!(d.tau, 1.0);
    }

    #[test]
    fn ordinals() {
        assert_eq!(
            [1, 2, 3, 4, 11, 12, 13, 21, 22].map(ordinal),
            ["1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd"]
        );
    }
}
