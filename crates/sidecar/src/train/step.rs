//! One minibatch's forward and backward pass, split over threads.
//!
//! candle runs each kernel on one thread (see `one_kernel_thread_unless_told`): its products of
//! a model's small matrices lose more to hand-offs than they gain from a second thread. A large
//! batch splits better by rows: each thread runs the forward and backward pass of a slice of the
//! batch, all slices reading the same copies of the table rows the batch uses, and the slices'
//! gradients are summed. Each slice's loss is weighted by its share of the rows its mean is
//! over, so the sum is the whole batch's gradient (to float rounding) whatever the thread count.

use std::ops::Range;

use candle_core::backprop::GradStore;
use candle_core::{Device, Result, Tensor};

use crate::train::dropout::Dropout;
use crate::train::kd::{BatchTargets, Plan, Target, head_losses};
use crate::train::student::{Batch, Student, TableRows};
use retort_model::two_tower::TwoTower;

/// Per-row targets of the whole training set, indexed by row.
pub struct Targets<'a> {
    /// Per task, its hard label.
    pub labels: &'a [Vec<f32>],
    /// Per teacher label, its value (0 where absent) and 1 where present, 0 where not.
    pub teacher: &'a [Vec<f32>],
    pub present: &'a [Vec<f32>],
}

/// A minibatch's gradients: of the student's variables and of the copies of the table rows it
/// read (`tables`), with each head's loss on the whole batch.
pub struct Gradients {
    pub grads: GradStore,
    pub tables: Vec<TableRows>,
    pub head_losses: Vec<f32>,
}

/// Forward and backward of `batch` (the training rows `rows`, from
/// [`Student::training_batch`]) on up to `threads` threads, with `dropout` (its `first_row` 0).
pub fn gradients(
    student: &Student,
    batch: &Batch,
    rows: &[usize],
    plan: &Plan,
    targets: &Targets<'_>,
    threads: usize,
    dropout: Option<Dropout>,
) -> Result<Gradients> {
    let tables = student.gather(batch)?;
    let parts = slices(rows.len(), threads);
    let present_in = |part: &[usize]| -> Vec<f32> {
        targets.present.iter().map(|p| part.iter().map(|&r| p[r]).sum()).collect()
    };
    let present_total = present_in(rows);
    let run = |range: Range<usize>| -> Result<(GradStore, Vec<f32>)> {
        let part = &rows[range.clone()];
        let dropout = dropout.map(|d| Dropout { first_row: range.start, ..d });
        let out = student.forward_training(batch, &tables, range.clone(), dropout.as_ref())?;
        let column =
            |v: &[f32]| Tensor::from_vec(part.iter().map(|&r| v[r]).collect(), part.len(), &Device::Cpu);
        let t = BatchTargets {
            hard: targets.labels.iter().map(|l| column(l)).collect::<Result<_>>()?,
            teacher: targets.teacher.iter().map(|l| column(l)).collect::<Result<_>>()?,
            present: targets.present.iter().map(|l| column(l)).collect::<Result<_>>()?,
        };
        let heads = head_losses(&out, plan, &t)?;
        let shares = shares(plan, part.len(), rows.len(), &present_in(part), &present_total);
        let mut loss: Option<Tensor> = None;
        let mut values = Vec::with_capacity(heads.len());
        for (l, share) in heads.iter().zip(shares) {
            // A share of 1 (one slice) is left out, so one thread computes exactly the loss of
            // an unsplit batch.
            let l = if share == 1.0 { l.clone() } else { (l * share)? };
            values.push(l.to_scalar::<f32>()?);
            loss = Some(match loss {
                None => l,
                Some(acc) => (acc + l)?,
            });
        }
        let loss = loss.expect("a plan has at least one head");
        Ok((loss.backward()?, values))
    };
    let mut results = std::thread::scope(|s| {
        let others: Vec<_> = parts[1..].iter().map(|r| s.spawn(|| run(r.clone()))).collect();
        let mut results = vec![run(parts[0].clone())];
        results.extend(others.into_iter().map(|h| h.join().expect("a training thread panicked")));
        results
    })
    .into_iter();
    let (mut grads, mut head_losses) = results.next().expect("at least one slice")?;
    let vars = student.vars();
    for result in results {
        let (other, values) = result?;
        for (acc, v) in head_losses.iter_mut().zip(values) {
            *acc += v;
        }
        let leaves = vars.iter().map(|v| v.as_tensor()).chain(tables.iter().map(|t| t.values.as_tensor()));
        for leaf in leaves {
            let Some(g) = other.get(leaf) else { continue };
            let sum = match grads.get(leaf) {
                Some(acc) => (acc + g)?,
                None => g.clone(),
            };
            grads.insert(leaf, sum);
        }
    }
    Ok(Gradients { grads, tables, head_losses })
}

/// Multiply-adds a slice of a batch must bring for a thread of its own to pay: below it, starting
/// the thread and summing its gradients cost more than the slice saves. The default student's
/// batch (about 31M, forward and backward) trains 1.7x slower on two threads than on one; a
/// teacher's (2.3G) 1.5x faster (BENCHMARKS.md, "Teacher training").
const SLICE_MACS: u64 = 200_000_000;

/// The threads to split a batch of `rows` over: `threads` when set, else the machine's cores as
/// far as each slice brings [`SLICE_MACS`].
pub fn threads_for(arch: &TwoTower, rows: usize, threads: usize) -> usize {
    if threads > 0 {
        return threads;
    }
    // Forward and backward: about three times the forward pass's multiply-adds.
    let work = 3 * arch.macs(1) * rows as u64;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    ((work / SLICE_MACS) as usize).clamp(1, cores)
}

/// `threads` contiguous slices of `0..rows`, as even as can be, none empty.
fn slices(rows: usize, threads: usize) -> Vec<Range<usize>> {
    let n = threads.clamp(1, rows.max(1));
    (0..n).map(|k| rows * k / n..rows * (k + 1) / n).collect()
}

/// Per head, the weight of a slice's loss: the share of the batch's rows its mean is over
/// (the rows with a teacher label, for a head trained on the teacher's alone).
fn shares(plan: &Plan, rows: usize, total: usize, present: &[f32], present_total: &[f32]) -> Vec<f64> {
    plan.targets
        .iter()
        .map(|t| match t {
            Target::Teacher { teacher, .. } if present_total[*teacher] > 0.0 => {
                f64::from(present[*teacher]) / f64::from(present_total[*teacher])
            }
            Target::Teacher { .. } => 0.0,
            Target::Hard { .. } | Target::Direct { .. } => rows as f64 / total.max(1) as f64,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_teachers_batch_is_split_and_a_students_is_not() {
        let student = crate::data::demo::spec(crate::data::demo::Domain::Target).two_tower(false);
        assert_eq!(threads_for(&student, 512, 0), 1);
        assert_eq!(threads_for(&student, 512, 3), 3, "a count set is kept");
        let mut teacher = student.clone();
        teacher.embedding_dim = 32;
        teacher.context_hidden = vec![512, 256, 128];
        teacher.item_hidden = vec![512, 256, 128];
        teacher.interaction_hidden = vec![512, 256, 128];
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert!(threads_for(&teacher, 1024, 0) >= cores.min(2));
    }

    #[test]
    fn slices_cover_the_rows_once() {
        assert_eq!(slices(10, 1), vec![0..10]);
        assert_eq!(slices(10, 2), vec![0..5, 5..10]);
        assert_eq!(slices(7, 3), vec![0..2, 2..4, 4..7]);
        assert_eq!(slices(2, 4), vec![0..1, 1..2]);
        assert_eq!(slices(0, 2), vec![0..0]);
    }
}
