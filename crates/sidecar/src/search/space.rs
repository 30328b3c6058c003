//! The teacher search's space: the choices that make a teacher, each a list of values to try,
//! and the candidates drawn from their product. A candidate renders as a teacher config file
//! (the `[model]` and `[train]` tables `retort train` reads), plus the teacher heads its proxy
//! students distil.
//!
//! ```toml
//! [space]
//! embedding_dim = [16, 64]
//! towers = [[128], [512, 256]]            # context and item towers alike
//! interaction = [[128], [512, 512, 128]]
//! mask_probability = [0.0, 0.3]           # how often features were masked to their defaults
//! left_out_features = [[], ["video_id"]]  # source features the teacher does not read
//! source_tasks = [[], ["click", "like"]]  # source tasks it trains on ([]: all)
//! epochs = [1, 2]
//! distilled_heads = [["play"], ["play", "like", "long_listen"]]
//! candidates = 16                         # drawn without replacement; all when fewer
//! seed = 1
//! ```

use serde::Deserialize;

/// The search space as a file gives it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpaceFile {
    pub space: Space,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Space {
    pub embedding_dim: Vec<usize>,
    /// Context and item tower layers alike; `[]` feeds the features straight to the
    /// interaction (concatenated towers).
    pub towers: Vec<Vec<usize>>,
    pub interaction: Vec<Vec<usize>>,
    /// Each task tower's layers; `[]` puts the heads straight on the interaction.
    #[serde(default = "task_tower")]
    pub task_hidden: Vec<Vec<usize>>,
    #[serde(default = "no_masking")]
    pub mask_probability: Vec<f64>,
    /// Choices of source features the teacher does not read.
    #[serde(default = "nothing")]
    pub left_out_features: Vec<Vec<String>>,
    /// Choices of source tasks the teacher trains on; an empty choice is all of them.
    #[serde(default = "nothing")]
    pub source_tasks: Vec<Vec<String>>,
    #[serde(default = "one_epoch")]
    pub epochs: Vec<usize>,
    pub distilled_heads: Vec<Vec<String>>,
    /// How many candidates to draw; every one when the product is no larger.
    pub candidates: usize,
    #[serde(default = "seed_one")]
    pub seed: u64,
}

fn task_tower() -> Vec<Vec<usize>> {
    vec![vec![64]]
}

fn no_masking() -> Vec<f64> {
    vec![0.0]
}

fn nothing() -> Vec<Vec<String>> {
    vec![Vec::new()]
}

fn one_epoch() -> Vec<usize> {
    vec![1]
}

fn seed_one() -> u64 {
    1
}

/// One teacher configuration to try.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Candidate {
    pub embedding_dim: usize,
    pub towers: Vec<usize>,
    pub interaction: Vec<usize>,
    pub task_hidden: Vec<usize>,
    pub mask_probability: f64,
    pub left_out_features: Vec<String>,
    pub source_tasks: Vec<String>,
    pub epochs: usize,
    pub distilled_heads: Vec<String>,
}

impl Space {
    /// Checks every dimension has at least one value and every value is usable, naming the
    /// first that is not.
    pub fn validate(&self) -> Result<(), String> {
        let empty = [
            ("embedding_dim", self.embedding_dim.is_empty()),
            ("towers", self.towers.is_empty()),
            ("interaction", self.interaction.is_empty()),
            ("task_hidden", self.task_hidden.is_empty()),
            ("mask_probability", self.mask_probability.is_empty()),
            ("left_out_features", self.left_out_features.is_empty()),
            ("source_tasks", self.source_tasks.is_empty()),
            ("epochs", self.epochs.is_empty()),
            ("distilled_heads", self.distilled_heads.is_empty()),
        ];
        if let Some((name, _)) = empty.iter().find(|(_, e)| *e) {
            return Err(format!("space.{name} lists no values"));
        }
        if self.embedding_dim.contains(&0) || self.epochs.contains(&0) {
            return Err("space.embedding_dim and space.epochs must be at least 1".into());
        }
        if let Some(layers) = self.interaction.iter().find(|l| l.is_empty()) {
            return Err(format!(
                "space.interaction: a choice needs a layer (it joins the towers), not {layers:?}"
            ));
        }
        if let Some(layers) =
            self.towers.iter().chain(&self.interaction).chain(&self.task_hidden).find(|l| l.contains(&0))
        {
            return Err(format!("a layer list must have positive widths, not {layers:?}"));
        }
        if let Some(p) = self.mask_probability.iter().find(|p| !(0.0..1.0).contains(*p)) {
            return Err(format!("space.mask_probability must be in [0, 1), not {p}"));
        }
        if let Some(h) = self.distilled_heads.iter().find(|h| h.is_empty()) {
            return Err(format!("space.distilled_heads: a choice must name at least one head, not {h:?}"));
        }
        if self.candidates == 0 {
            return Err("space.candidates must be at least 1".into());
        }
        Ok(())
    }

    /// Size of the product of every dimension.
    pub fn size(&self) -> usize {
        [
            self.embedding_dim.len(),
            self.towers.len(),
            self.interaction.len(),
            self.task_hidden.len(),
            self.mask_probability.len(),
            self.left_out_features.len(),
            self.source_tasks.len(),
            self.epochs.len(),
            self.distilled_heads.len(),
        ]
        .iter()
        .product()
    }

    /// The `index`th point of the product, the last dimension varying fastest.
    pub fn point(&self, index: usize) -> Candidate {
        let mut i = index;
        let mut pick = |len: usize| {
            let k = i % len;
            i /= len;
            k
        };
        let heads = pick(self.distilled_heads.len());
        let epochs = pick(self.epochs.len());
        let tasks = pick(self.source_tasks.len());
        let left_out = pick(self.left_out_features.len());
        let mask = pick(self.mask_probability.len());
        let task_hidden = pick(self.task_hidden.len());
        let interaction = pick(self.interaction.len());
        let towers = pick(self.towers.len());
        let embedding = pick(self.embedding_dim.len());
        Candidate {
            embedding_dim: self.embedding_dim[embedding],
            towers: self.towers[towers].clone(),
            interaction: self.interaction[interaction].clone(),
            task_hidden: self.task_hidden[task_hidden].clone(),
            mask_probability: self.mask_probability[mask],
            left_out_features: self.left_out_features[left_out].clone(),
            source_tasks: self.source_tasks[tasks].clone(),
            epochs: self.epochs[epochs],
            distilled_heads: self.distilled_heads[heads].clone(),
        }
    }

    /// `candidates` distinct points drawn with the seed (a partial Fisher–Yates shuffle of the
    /// indices), or every point in order when there are no more than that.
    pub fn draw(&self) -> Vec<Candidate> {
        let size = self.size();
        if self.candidates >= size {
            return (0..size).map(|i| self.point(i)).collect();
        }
        let mut rng = retort_model::rng::SplitMix64::new(self.seed);
        let mut indices: Vec<usize> = (0..size).collect();
        for k in 0..self.candidates {
            let j = k + rng.below((size - k) as u64) as usize;
            indices.swap(k, j);
        }
        indices[..self.candidates].iter().map(|&i| self.point(i)).collect()
    }
}

impl Candidate {
    /// The teacher config file `retort train` reads for this candidate, with the batch size and
    /// learning rate the search trains every teacher with.
    pub fn teacher_config(&self, batch_size: usize, learning_rate: f64) -> String {
        let list =
            |v: &[usize]| format!("[{}]", v.iter().map(usize::to_string).collect::<Vec<_>>().join(", "));
        let names =
            |v: &[String]| format!("[{}]", v.iter().map(|n| format!("{n:?}")).collect::<Vec<_>>().join(", "));
        let mut chosen = String::new();
        if !self.source_tasks.is_empty() {
            chosen.push_str(&format!("tasks = {}\n", names(&self.source_tasks)));
        }
        if !self.left_out_features.is_empty() {
            chosen.push_str(&format!("leave_out = {}\n", names(&self.left_out_features)));
        }
        format!(
            "[model]\nembedding_dim = {}\ncontext_hidden = {}\nitem_hidden = {}\ninteraction_hidden = {}\n\
             task_hidden = {}\nlogit_outputs = true\n{chosen}\n[train]\nepochs = {}\nbatch_size = {batch_size}\n\
             learning_rate = {learning_rate}\nmask_probability = {}\n",
            self.embedding_dim,
            list(&self.towers),
            list(&self.towers),
            list(&self.interaction),
            list(&self.task_hidden),
            self.epochs,
            self.mask_probability,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPACE: &str = r#"
[space]
embedding_dim = [16, 64]
towers = [[128], [512, 256]]
interaction = [[128], [512, 512, 128]]
mask_probability = [0.0, 0.3]
left_out_features = [[], ["video_id", "channel_id"]]
epochs = [1]
distilled_heads = [["play"], ["play", "like", "long_listen"]]
candidates = 5
seed = 7
"#;

    fn space() -> Space {
        toml::from_str::<SpaceFile>(SPACE).unwrap().space
    }

    #[test]
    fn every_point_of_the_product_once() {
        let s = space();
        assert_eq!(s.size(), 2 * 2 * 2 * 2 * 2 * 2);
        let all: Vec<Candidate> = (0..s.size()).map(|i| s.point(i)).collect();
        for (i, a) in all.iter().enumerate() {
            assert!(all[i + 1..].iter().all(|b| b != a), "point {i} repeats");
        }
        assert_eq!(all[0].distilled_heads, ["play"]);
        assert_eq!(
            all[1].distilled_heads,
            ["play", "like", "long_listen"],
            "the last dimension varies fastest"
        );
        assert_eq!(all[63].embedding_dim, 64);
        assert_eq!(all[2].left_out_features, ["video_id", "channel_id"]);
        assert!(all.iter().all(|c| c.source_tasks.is_empty()), "one choice by default: every task");
    }

    #[test]
    fn draws_distinct_candidates_reproducibly() {
        let s = space();
        let a = s.draw();
        assert_eq!(a.len(), 5);
        for (i, c) in a.iter().enumerate() {
            assert!(a[i + 1..].iter().all(|d| d != c));
        }
        assert_eq!(a, s.draw(), "same seed, same candidates");
        assert_ne!(a, Space { seed: 8, ..s.clone() }.draw());
        assert_eq!(Space { candidates: 100, ..s }.draw().len(), 64, "all of a small space");
    }

    #[test]
    fn a_candidate_renders_as_a_teacher_config_the_trainer_reads() {
        let mut c = space().point(63);
        c.source_tasks = vec!["click".into(), "like".into()];
        let text = c.teacher_config(1024, 0.002);
        let parsed: crate::release::run::RunConfig = toml::from_str(&text).unwrap();
        let as_toml: toml::Table = toml::from_str(&toml::to_string(&parsed).unwrap()).unwrap();
        assert_eq!(as_toml["model"]["embedding_dim"].as_integer(), Some(64));
        assert_eq!(as_toml["model"]["interaction_hidden"].as_array().unwrap().len(), 3);
        assert_eq!(as_toml["train"]["mask_probability"].as_float(), Some(0.3));
        assert_eq!(as_toml["train"]["batch_size"].as_integer(), Some(1024));
        assert_eq!(parsed.model.leave_out, ["video_id", "channel_id"]);
        assert_eq!(parsed.model.tasks, ["click", "like"]);
    }

    // See: issue 14 (9): the space could not express concatenated towers or other task towers.
    #[test]
    fn towers_may_be_concatenated_and_task_towers_chosen() {
        let mut s = space();
        s.towers = vec![vec![]];
        s.task_hidden = vec![vec![], vec![32, 16]];
        s.validate().unwrap();
        assert_eq!(s.size(), 64, "one tower choice, two task towers");
        let c = s.point(0);
        let parsed: crate::release::run::RunConfig = toml::from_str(&c.teacher_config(512, 0.01)).unwrap();
        assert!(parsed.model.context_hidden.is_empty() && parsed.model.item_hidden.is_empty());
        let tasks: Vec<Vec<usize>> = (0..s.size()).map(|i| s.point(i).task_hidden).collect();
        assert!(tasks.contains(&vec![]) && tasks.contains(&vec![32, 16]));
        let parsed: crate::release::run::RunConfig =
            toml::from_str(&s.point(s.size() - 1).teacher_config(512, 0.01)).unwrap();
        assert_eq!(parsed.model.task_hidden, [32, 16]);
        parsed.architecture(&crate::data::demo::spec(crate::data::demo::Domain::Source)).unwrap();
    }

    #[test]
    fn a_bad_space_is_named() {
        let mut s = space();
        s.towers.push(vec![0]);
        assert!(s.validate().unwrap_err().contains("positive widths"));
        let mut s = space();
        s.interaction.push(vec![]);
        assert!(s.validate().unwrap_err().contains("space.interaction"));
        let s = Space { mask_probability: vec![1.5], ..space() };
        assert!(s.validate().unwrap_err().contains("1.5"));
        let s = Space { distilled_heads: vec![], ..space() };
        assert!(s.validate().unwrap_err().contains("distilled_heads"));
        assert!(space().validate().is_ok());
        assert!(toml::from_str::<SpaceFile>("[space]\nwidth = [1]\n").is_err(), "unknown keys are refused");
    }
}
