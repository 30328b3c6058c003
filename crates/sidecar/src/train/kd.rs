//! Distillation modes and what each head is trained on.
//!
//! Per task, from the config:
//! - `none`: the served head learns the hard label only (the control);
//! - `direct`: the served head learns `(1-α)·hard + α·sigmoid(teacher/T)`;
//! - `aux`: the served head learns the hard label only, and an auxiliary head on the same task
//!   tower learns the teacher's logit with weight β; the auxiliary head is never exported, so the
//!   teacher's bias for another product cannot leak into the served logit (Papers A and B);
//! - `aux_new` (a head of its own, `[[new_heads]]`): a non-serving head for a teacher task the
//!   student does not have, on the tower of a related task.

use std::collections::BTreeMap;

use candle_core::{Result as CandleResult, Tensor};
use serde::{Deserialize, Serialize};

use crate::train::losses;
use retort_model::manifest::HeadKind;
use retort_model::two_tower::{HeadSpec, TwoTower};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    None,
    Direct,
    Aux,
}

/// How an auxiliary head learns the teacher.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuxLoss {
    /// Squared error between logits.
    #[default]
    Logit,
    /// BCE on probabilities tempered by `T`.
    Tempered,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskDistill {
    #[serde(default)]
    pub mode: Mode,
    /// The teacher label to learn from: a target name of the labelling mapping or a teacher head.
    /// Defaults to the task's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher: Option<String>,
    /// `direct`: weight of the soft label in the served head's target.
    #[serde(default = "half")]
    pub alpha: f64,
    /// `aux`: weight of the auxiliary loss.
    #[serde(default = "one")]
    pub beta: f64,
    #[serde(default)]
    pub loss: AuxLoss,
}

impl TaskDistill {
    /// An auxiliary head on the task's own teacher label, with the default weights.
    pub fn aux() -> TaskDistill {
        TaskDistill { mode: Mode::Aux, teacher: None, alpha: half(), beta: one(), loss: AuxLoss::default() }
    }
}

fn half() -> f64 {
    0.5
}

fn one() -> f64 {
    1.0
}

/// A non-serving head for a teacher task the student lacks (`aux_new`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewHead {
    pub name: String,
    /// Teacher head (or mapping target) it learns.
    pub teacher: String,
    /// The student task whose tower it sits on.
    pub tower_of: String,
    #[serde(default = "one")]
    pub beta: f64,
    #[serde(default)]
    pub loss: AuxLoss,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistillConfig {
    /// Temperature of soft labels (`direct`) and of the tempered auxiliary loss.
    #[serde(default = "one")]
    pub temperature: f64,
    /// Task name → its mode. Tasks not listed are trained without the teacher.
    #[serde(default)]
    pub tasks: BTreeMap<String, TaskDistill>,
    #[serde(default)]
    pub new_heads: Vec<NewHead>,
}

// By hand, not derived: the default temperature is the reader's 1, so a config written from a
// default reads back as the same config (a derived 0 divided every soft label by zero).
impl Default for DistillConfig {
    fn default() -> Self {
        DistillConfig { temperature: one(), tasks: BTreeMap::new(), new_heads: Vec::new() }
    }
}

impl DistillConfig {
    /// This config distilling exactly `heads`: each as the config sets it, or through an
    /// auxiliary head with the defaults when it does not name it; its temperature and new
    /// heads kept.
    pub fn for_heads(&self, heads: &[String]) -> DistillConfig {
        let tasks = heads
            .iter()
            .map(|h| (h.clone(), self.tasks.get(h).cloned().unwrap_or_else(TaskDistill::aux)))
            .collect();
        DistillConfig { tasks, ..self.clone() }
    }
}

/// What one head of the student learns from.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// The hard label of task `task` (an index into the training labels).
    Hard { task: usize },
    /// A blend of the hard label and the teacher's tempered probability.
    Direct { task: usize, teacher: usize, alpha: f64 },
    /// The teacher's label only.
    Teacher { teacher: usize, beta: f64, loss: AuxLoss },
}

/// The student's heads with their targets, and the teacher labels they need.
#[derive(Debug, Clone)]
pub struct Plan {
    pub arch: TwoTower,
    /// Per head of `arch`.
    pub targets: Vec<Target>,
    /// Teacher labels read from the store, in the order `Target`s index them.
    pub teacher_labels: Vec<String>,
    pub temperature: f64,
}

impl Plan {
    /// Adds the heads `config` asks for to `base` (whose heads are the tasks, all serving).
    pub fn new(base: &TwoTower, config: &DistillConfig) -> Result<Plan, String> {
        if !(config.temperature.is_finite() && config.temperature > 0.0) {
            return Err(format!(
                "distill.temperature is {}; it must be a positive number",
                config.temperature
            ));
        }
        let mut arch = base.clone();
        let mut targets: Vec<Target> = (0..base.heads.len()).map(|task| Target::Hard { task }).collect();
        let mut teacher_labels: Vec<String> = Vec::new();
        let mut label = |name: &str| -> usize {
            teacher_labels.iter().position(|l| l == name).unwrap_or_else(|| {
                teacher_labels.push(name.to_string());
                teacher_labels.len() - 1
            })
        };
        for (task, d) in &config.tasks {
            let ix = base.heads.iter().position(|h| &h.name == task).ok_or_else(|| {
                format!("distillation names task `{task}`, which the student does not have")
            })?;
            let teacher = d.teacher.clone().unwrap_or_else(|| task.clone());
            match d.mode {
                Mode::None => {}
                Mode::Direct => {
                    if base.heads[ix].kind != HeadKind::Binary {
                        return Err(format!(
                            "task `{task}`: `direct` blends probabilities; it needs a binary task"
                        ));
                    }
                    targets[ix] = Target::Direct { task: ix, teacher: label(&teacher), alpha: d.alpha };
                }
                Mode::Aux => {
                    arch.heads.push(HeadSpec {
                        name: format!("{task}__aux"),
                        kind: HeadKind::Binary,
                        tower: base.heads[ix].tower,
                        serving: false,
                    });
                    targets.push(Target::Teacher { teacher: label(&teacher), beta: d.beta, loss: d.loss });
                }
            }
        }
        for new in &config.new_heads {
            let tower = base
                .heads
                .iter()
                .find(|h| h.name == new.tower_of)
                .ok_or_else(|| {
                    format!(
                        "new head `{}` sits on task `{}`, which the student does not have",
                        new.name, new.tower_of
                    )
                })?
                .tower;
            if arch.heads.iter().any(|h| h.name == new.name) {
                return Err(format!("new head `{}` clashes with a head of that name", new.name));
            }
            arch.heads.push(HeadSpec {
                name: new.name.clone(),
                kind: HeadKind::Binary,
                tower,
                serving: false,
            });
            targets.push(Target::Teacher { teacher: label(&new.teacher), beta: new.beta, loss: new.loss });
        }
        Ok(Plan { arch, targets, teacher_labels, temperature: config.temperature })
    }

    /// Whether any head learns from the teacher (a control run never opens the label store).
    pub fn uses_teacher(&self) -> bool {
        !self.teacher_labels.is_empty()
    }

    /// The same plan reading its teacher labels from `labels`, a superset of its own in any
    /// order: several plans can then train on one [`crate::train::fit::TrainingData`] with the union
    /// of their labels attached.
    pub fn reading_labels(mut self, labels: &[String]) -> Result<Plan, String> {
        let index = |name: &String| {
            labels
                .iter()
                .position(|l| l == name)
                .ok_or_else(|| format!("teacher label `{name}` is not among the attached labels"))
        };
        let moved: Vec<usize> = self.teacher_labels.iter().map(index).collect::<Result<_, _>>()?;
        for t in &mut self.targets {
            match t {
                Target::Hard { .. } => {}
                Target::Direct { teacher, .. } | Target::Teacher { teacher, .. } => {
                    *teacher = moved[*teacher]
                }
            }
        }
        self.teacher_labels = labels.to_vec();
        Ok(self)
    }
}

/// The labels of one minibatch: per task the hard labels, per teacher label the teacher's
/// logits (NaN where the store has no label for the row).
pub struct BatchTargets {
    pub hard: Vec<Tensor>,
    pub teacher: Vec<Tensor>,
    /// Per teacher label: 1 where present, 0 where not.
    pub present: Vec<Tensor>,
}

/// The loss of each head on one minibatch, in head order; `out` is `[rows, heads]`.
pub fn head_losses(out: &Tensor, plan: &Plan, t: &BatchTargets) -> CandleResult<Vec<Tensor>> {
    let temperature = plan.temperature;
    plan.targets
        .iter()
        .enumerate()
        .map(|(h, target)| {
            let z = out.narrow(1, h, 1)?.squeeze(1)?;
            match target {
                Target::Hard { task } => match plan.arch.heads[h].kind {
                    HeadKind::Binary => losses::bce_with_logits(&z, &t.hard[*task]),
                    HeadKind::Regression => losses::mse(&z, &t.hard[*task]),
                },
                Target::Direct { task, teacher, alpha } => {
                    // Rows without a teacher label keep their hard label.
                    let soft = candle_nn::ops::sigmoid(&(t.teacher[*teacher].clone() / temperature)?)?;
                    let present = &t.present[*teacher];
                    let soft = ((&soft * present)? + (&t.hard[*task] * (1.0 - present)?)?)?;
                    let blended = ((&t.hard[*task] * (1.0 - alpha))? + (soft * *alpha)?)?;
                    losses::bce_with_logits(&z, &blended)
                }
                Target::Teacher { teacher, beta, loss } => {
                    let present = &t.present[*teacher];
                    let count = present.sum_all()?.to_scalar::<f32>()?;
                    if count == 0.0 {
                        return z.sum_all()? * 0.0;
                    }
                    let logit = &t.teacher[*teacher];
                    let per_row = match loss {
                        AuxLoss::Logit => (&z - logit)?.sqr(),
                        AuxLoss::Tempered => {
                            let zt = (&z / temperature)?;
                            let soft = candle_nn::ops::sigmoid(&(logit / temperature)?)?;
                            let softplus = (zt.abs()?.neg()?.exp()? + 1.0)?.log()?;
                            ((zt.relu()? - (&zt * &soft)?)? + softplus)? * (temperature * temperature)
                        }
                    }?;
                    // Mean over the rows that have a teacher label.
                    (per_row * present)?.sum_all()? * (*beta / count as f64)
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn base() -> TwoTower {
        let spec = crate::data::demo::spec(crate::data::demo::Domain::Target);
        spec.two_tower(false)
    }

    // See: issue 14 (7): a written default said `temperature = 0.0`.
    #[test]
    fn a_written_config_reads_back_as_itself_and_a_zero_temperature_is_refused() {
        let written = toml::to_string(&DistillConfig::default()).unwrap();
        assert_eq!(toml::from_str::<DistillConfig>(&written).unwrap(), DistillConfig::default());
        assert_eq!(DistillConfig::default().temperature, 1.0);
        let zero = DistillConfig { temperature: 0.0, ..DistillConfig::default() };
        assert!(Plan::new(&base(), &zero).unwrap_err().contains("temperature"));
    }

    #[test]
    fn for_heads_keeps_each_heads_own_settings_and_fills_in_the_rest() {
        let config: DistillConfig = toml::from_str(
            "temperature = 2.0\n[tasks.play]\nmode = \"aux\"\nbeta = 0.3\n[tasks.skip]\nmode = \"direct\"\n",
        )
        .unwrap();
        let c = config.for_heads(&["play".into(), "like".into()]);
        assert_eq!(c.temperature, 2.0);
        assert_eq!(c.tasks.keys().collect::<Vec<_>>(), ["like", "play"]);
        assert_eq!(c.tasks["play"].beta, 0.3);
        assert_eq!(c.tasks["like"], TaskDistill::aux());
    }

    #[test]
    fn aux_adds_a_non_serving_head_on_the_task_tower_and_none_reads_no_teacher() {
        let control = Plan::new(&base(), &DistillConfig::default()).unwrap();
        assert!(!control.uses_teacher());
        assert_eq!(control.arch.heads.len(), 4);

        let config: DistillConfig = toml::from_str(
            r#"
[tasks.play]
mode = "aux"
beta = 0.7
[tasks.long_listen]
mode = "direct"
teacher = "watch_long"
[[new_heads]]
name = "continue"
teacher = "continue_watching"
tower_of = "long_listen"
"#,
        )
        .unwrap();
        let plan = Plan::new(&base(), &config).unwrap();
        assert_eq!(plan.teacher_labels, ["watch_long", "play", "continue_watching"]);
        let aux = &plan.arch.heads[4];
        assert_eq!((aux.name.as_str(), aux.tower, aux.serving), ("play__aux", 0, false));
        let new = &plan.arch.heads[5];
        assert_eq!((new.name.as_str(), new.tower, new.serving), ("continue", 2, false));
        assert_eq!(plan.targets[0], Target::Hard { task: 0 });
        assert_eq!(plan.targets[2], Target::Direct { task: 2, teacher: 0, alpha: 0.5 });
        assert_eq!(plan.targets[4], Target::Teacher { teacher: 1, beta: 0.7, loss: AuxLoss::Logit });
        assert!(
            Plan::new(&base(), &toml::from_str("[tasks.plays]\nmode = \"aux\"").unwrap())
                .unwrap_err()
                .contains("`plays`")
        );

        let union: Vec<String> =
            ["like", "continue_watching", "play", "watch_long"].iter().map(|s| s.to_string()).collect();
        let moved = plan.clone().reading_labels(&union).unwrap();
        assert_eq!(moved.teacher_labels, union);
        assert_eq!(moved.targets[2], Target::Direct { task: 2, teacher: 3, alpha: 0.5 });
        assert_eq!(moved.targets[4], Target::Teacher { teacher: 2, beta: 0.7, loss: AuxLoss::Logit });
        assert_eq!(moved.targets[5], Target::Teacher { teacher: 1, beta: 1.0, loss: AuxLoss::Logit });
        assert!(plan.reading_labels(&union[..2]).unwrap_err().contains("`watch_long`"));
    }

    fn t(v: &[f32]) -> Tensor {
        Tensor::new(v, &Device::Cpu).unwrap()
    }

    fn losses_for(plan: &Plan, out: &Tensor, hard: f32, teacher: f32) -> Vec<f32> {
        let rows = out.dims2().unwrap().0;
        let targets = BatchTargets {
            hard: (0..4).map(|_| t(&vec![hard; rows])).collect(),
            teacher: plan.teacher_labels.iter().map(|_| t(&vec![teacher; rows])).collect(),
            present: plan.teacher_labels.iter().map(|_| t(&vec![1.0; rows])).collect(),
        };
        head_losses(out, plan, &targets).unwrap().into_iter().map(|l| l.to_scalar::<f32>().unwrap()).collect()
    }

    #[test]
    fn the_aux_head_learns_only_the_teacher_and_the_served_head_only_the_label() {
        let plan = Plan::new(&base(), &toml::from_str("[tasks.play]\nmode = \"aux\"").unwrap()).unwrap();
        let out =
            Tensor::new(&[[0.3f32, 0.1, -0.2, 0.4, 1.5], [-1.0, 0.2, 0.0, 0.1, -0.5]], &Device::Cpu).unwrap();
        let a = losses_for(&plan, &out, 1.0, 2.0);
        let b = losses_for(&plan, &out, 0.0, 2.0);
        let c = losses_for(&plan, &out, 1.0, -3.0);
        // Changing the hard labels moves the served head's loss, never the aux head's.
        assert_ne!(a[0], b[0]);
        assert_eq!(a[4], b[4]);
        // Changing the teacher moves the aux head's loss, never the served head's.
        assert_eq!(a[0], c[0]);
        assert_ne!(a[4], c[4]);
        // Logit loss: mean of (1.5-2)² and (-0.5-2)² = (0.25 + 6.25) / 2.
        assert!((a[4] - 3.25).abs() < 1e-5, "{}", a[4]);
    }

    #[test]
    fn direct_blends_the_soft_label_into_the_served_head() {
        let plan =
            Plan::new(&base(), &toml::from_str("[tasks.play]\nmode = \"direct\"\nalpha = 0.25").unwrap())
                .unwrap();
        let out = Tensor::new(&[[0.0f32, 0.0, 0.0, 0.0]], &Device::Cpu).unwrap();
        // Target = 0.75·1 + 0.25·σ(0) = 0.875; BCE at z = 0 is ln 2 whatever the target.
        let l = losses_for(&plan, &out, 1.0, 0.0);
        assert!((l[0] - std::f32::consts::LN_2).abs() < 1e-6);
        let out = Tensor::new(&[[2.0f32, 0.0, 0.0, 0.0]], &Device::Cpu).unwrap();
        // z = 2, target 0.875: ln(1+e²) - 2·0.875 = 0.376928.
        let l = losses_for(&plan, &out, 1.0, 0.0);
        assert!((l[0] - 0.376928).abs() < 1e-5, "{}", l[0]);
    }
}
