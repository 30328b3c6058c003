//! Training checkpoints: a student's parameters, its optimiser's state and how far in time its
//! training data reached, kept beside the published package (`checkpoint.safetensors`) so
//! the next run can continue training instead of starting over (`retort train --warm-start`).
//! The server never reads it.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::train::adamw::{Moments, OptimizerState};
use crate::train::fit::TrainError;
use crate::train::student::Student;

/// The file's name inside a package directory.
pub const CHECKPOINT: &str = "checkpoint.safetensors";

#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// Every trainable variable, in [`Student::vars`] order.
    pub params: Vec<Vec<f32>>,
    pub optimizer: OptimizerState,
    /// The newest example time (seconds) the model has trained on; a warm start trains on
    /// what came after it.
    pub trained_through: i64,
}

fn err(path: &Path) -> impl Fn(String) -> TrainError + '_ {
    move |reason| TrainError::Checkpoint { path: path.display().to_string(), reason }
}

impl Checkpoint {
    pub fn capture(
        student: &Student,
        optimizer: OptimizerState,
        trained_through: i64,
    ) -> Result<Checkpoint, TrainError> {
        let params = student
            .vars()
            .iter()
            .map(|v| v.as_tensor().flatten_all()?.to_vec1::<f32>())
            .collect::<Result<_, _>>()?;
        Ok(Checkpoint { params, optimizer, trained_through })
    }

    /// Writes the checkpoint to `path` and syncs it.
    pub fn write(&self, path: &Path) -> Result<(), TrainError> {
        let dev = Device::Cpu;
        let e = err(path);
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        let vector = |v: &[f32]| Tensor::from_slice(v, v.len(), &dev);
        for (k, p) in self.params.iter().enumerate() {
            tensors.insert(format!("param.{k:04}"), vector(p)?);
        }
        for (k, m) in self.optimizer.moments.iter().enumerate() {
            tensors.insert(format!("adamw.m.{k:04}"), vector(&m.m)?);
            tensors.insert(format!("adamw.v.{k:04}"), vector(&m.v)?);
            if !m.row_steps.is_empty() {
                let steps = Tensor::from_slice(&m.row_steps, m.row_steps.len(), &dev)?;
                tensors.insert(format!("adamw.rows.{k:04}"), steps);
            }
        }
        let meta = [self.optimizer.step as i64, self.trained_through];
        tensors.insert("meta".into(), Tensor::from_slice(&meta, 2, &dev)?);
        candle_core::safetensors::save(&tensors, path).map_err(|x| e(x.to_string()))?;
        std::fs::File::open(path).and_then(|f| f.sync_all()).map_err(|x| e(x.to_string()))
    }

    pub fn read(path: &Path) -> Result<Checkpoint, TrainError> {
        let e = err(path);
        if !path.is_file() {
            return Err(e("not found (packages published by `retort train` carry one)".into()));
        }
        let mut tensors = candle_core::safetensors::load(path, &Device::Cpu).map_err(|x| e(x.to_string()))?;
        let mut take = |name: &str| tensors.remove(name).ok_or_else(|| e(format!("no tensor `{name}`")));
        let meta = take("meta")?;
        if meta.dtype() != DType::I64 || meta.elem_count() != 2 {
            return Err(e("`meta` is not two int64 values".into()));
        }
        let meta: Vec<i64> = meta.to_vec1()?;
        let floats = |t: Tensor| -> Result<Vec<f32>, TrainError> {
            if t.dtype() != DType::F32 {
                return Err(e(format!("a {:?} tensor where f32 was expected", t.dtype())));
            }
            Ok(t.flatten_all()?.to_vec1()?)
        };
        let mut params = Vec::new();
        let mut moments = Vec::new();
        for k in 0.. {
            let Ok(p) = take(&format!("param.{k:04}")) else { break };
            params.push(floats(p)?);
            let m = floats(take(&format!("adamw.m.{k:04}"))?)?;
            let v = floats(take(&format!("adamw.v.{k:04}"))?)?;
            // Absent from checkpoints written before tables were updated by rows: every row
            // then took every step, which an empty count means.
            let row_steps = match take(&format!("adamw.rows.{k:04}")) {
                Err(_) => Vec::new(),
                Ok(t) if t.dtype() == DType::U32 => t.to_vec1()?,
                Ok(t) => {
                    return Err(e(format!("row step counts of parameter {k} are {:?}, not u32", t.dtype())));
                }
            };
            moments.push(Moments { m, v, row_steps });
        }
        Ok(Checkpoint {
            params,
            optimizer: OptimizerState { step: meta[0].max(0) as u64, moments },
            trained_through: meta[1],
        })
    }

    /// Sets `student`'s parameters to the checkpoint's, which must be of its architecture.
    pub fn restore(&self, student: &Student) -> Result<(), TrainError> {
        let vars = student.vars();
        let mismatch = |what: String| {
            TrainError::Config(format!(
                "the checkpoint is of another architecture ({what}); a warm start needs the same \
                 [model] layers, tasks and distillation heads"
            ))
        };
        if vars.len() != self.params.len() {
            return Err(mismatch(format!("{} parameters, the model has {}", self.params.len(), vars.len())));
        }
        for (k, (var, p)) in vars.iter().zip(&self.params).enumerate() {
            if var.elem_count() != p.len() {
                return Err(mismatch(format!(
                    "parameter {k} has {} values, the model's {}",
                    p.len(),
                    var.elem_count()
                )));
            }
            var.set(&Tensor::from_slice(p, var.shape(), &Device::Cpu)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::demo::{self, Domain};

    #[test]
    fn round_trips_and_refuses_another_architecture() {
        let arch = demo::spec(Domain::Target).two_tower(false);
        let student = Student::new(&arch, 3, &Device::Cpu).unwrap();
        let moments: Vec<Moments> = student
            .vars()
            .iter()
            .enumerate()
            .map(|(k, v)| Moments {
                m: vec![k as f32; v.elem_count()],
                v: vec![0.5; v.elem_count()],
                // The tables (the first two parameters) with per-row step counts.
                row_steps: if k < 2 { (0..v.dims()[0] as u32).collect() } else { Vec::new() },
            })
            .collect();
        let ck = Checkpoint::capture(&student, OptimizerState { step: 42, moments }, 1_767_312_000).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CHECKPOINT);
        ck.write(&path).unwrap();
        let back = Checkpoint::read(&path).unwrap();
        assert_eq!(back.params, ck.params);
        assert_eq!(back.optimizer, ck.optimizer);
        assert_eq!(back.trained_through, 1_767_312_000);

        let other = Student::new(&arch, 9, &Device::Cpu).unwrap();
        back.restore(&other).unwrap();
        assert_eq!(Checkpoint::capture(&other, back.optimizer.clone(), 0).unwrap().params, ck.params);

        let mut wider = arch.clone();
        wider.embedding_dim = 8;
        let err = back.restore(&Student::new(&wider, 1, &Device::Cpu).unwrap()).unwrap_err().to_string();
        assert!(err.contains("another architecture"), "{err}");
        assert!(Checkpoint::read(&dir.path().join("none")).unwrap_err().to_string().contains("not found"));
    }
}
