//! Shards of a corpus run: whole batches of the global document order, batch `b` belonging to
//! shard `b mod N`, so every document runs in exactly the same padded batch sharded or not and a
//! merged store is byte-identical to the unsharded one. `--shard K/N`, `--shard slurm` (a Slurm
//! job array) and `--shard k8s/N` (a Kubernetes Indexed Job).

use anyhow::{bail, ensure, Context, Result};

/// Shard `index` of `count` (`0 <= index < count`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl Shard {
    /// The whole run: one shard.
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };

    /// Whether batch `batch` (0-based, of `--batch-size` consecutive records) is this shard's.
    pub fn owns(self, batch: u64) -> bool {
        batch % self.count as u64 == self.index as u64
    }

    /// Parses `--shard`: `K/N`, `slurm` or `k8s/N`, reading the job's environment through `env`.
    pub fn parse(arg: &str, env: impl Fn(&str) -> Option<String>) -> Result<Shard> {
        let var = |name: &str| -> Result<u64> {
            let value = env(name).with_context(|| {
                format!("--shard {arg}: {name} is not set (is this running inside the job?)")
            })?;
            value
                .trim()
                .parse()
                .with_context(|| format!("--shard {arg}: {name}={value:?} is not a number"))
        };
        let (index, count) = if arg == "slurm" {
            let id = var("SLURM_ARRAY_TASK_ID")?;
            let min = var("SLURM_ARRAY_TASK_MIN")?;
            let count = var("SLURM_ARRAY_TASK_COUNT")?;
            ensure!(
                id >= min,
                "--shard slurm: SLURM_ARRAY_TASK_ID {id} is below SLURM_ARRAY_TASK_MIN {min}"
            );
            let max = var("SLURM_ARRAY_TASK_MAX").ok();
            if let Some(max) = max {
                // `--array=0-9:2` or `1,5,7` would leave holes in the shard numbers.
                ensure!(
                    max - min + 1 == count,
                    "--shard slurm needs a contiguous array (--array=0-{}): this one runs \
                     {count} tasks from {min} to {max}",
                    count - 1
                );
            }
            (id - min, count)
        } else if let Some(count) = arg.strip_prefix("k8s/") {
            let count = parse_count(arg, count)?;
            (var("JOB_COMPLETION_INDEX")?, count)
        } else if let Some((k, n)) = arg.split_once('/') {
            let index: u64 = k
                .parse()
                .with_context(|| format!("--shard {arg}: {k:?} is not a shard number"))?;
            (index, parse_count(arg, n)?)
        } else {
            bail!("--shard {arg}: expected K/N (K from 0 to N-1), slurm, or k8s/N");
        };
        ensure!(
            index < count,
            "--shard {arg}: shard {index} does not exist among {count} (they count from 0 to {})",
            count - 1
        );
        ensure!(count <= u32::MAX as u64, "--shard {arg}: too many shards");
        Ok(Shard {
            index: index as u32,
            count: count as u32,
        })
    }
}

fn parse_count(arg: &str, n: &str) -> Result<u64> {
    let count: u64 = n
        .parse()
        .with_context(|| format!("--shard {arg}: {n:?} is not a shard count"))?;
    ensure!(
        count >= 1,
        "--shard {arg}: the shard count must be at least 1"
    );
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn shard_forms() {
        let none = env(&[]);
        assert_eq!(
            Shard::parse("2/4", &none).unwrap(),
            Shard { index: 2, count: 4 }
        );
        assert!(Shard::parse("4/4", &none).is_err());
        assert!(Shard::parse("0/0", &none).is_err());
        assert!(Shard::parse("x", &none).is_err());
        let slurm = env(&[
            ("SLURM_ARRAY_TASK_ID", "7"),
            ("SLURM_ARRAY_TASK_MIN", "5"),
            ("SLURM_ARRAY_TASK_MAX", "8"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
        ]);
        assert_eq!(
            Shard::parse("slurm", &slurm).unwrap(),
            Shard { index: 2, count: 4 }
        );
        let err = Shard::parse("slurm", &none).unwrap_err().to_string();
        assert!(err.contains("SLURM_ARRAY_TASK_ID"), "{err}");
        let holes = env(&[
            ("SLURM_ARRAY_TASK_ID", "2"),
            ("SLURM_ARRAY_TASK_MIN", "0"),
            ("SLURM_ARRAY_TASK_MAX", "4"),
            ("SLURM_ARRAY_TASK_COUNT", "3"),
        ]);
        assert!(Shard::parse("slurm", &holes).is_err());
        let k8s = env(&[("JOB_COMPLETION_INDEX", "1")]);
        assert_eq!(
            Shard::parse("k8s/3", &k8s).unwrap(),
            Shard { index: 1, count: 3 }
        );
        assert!(Shard { index: 1, count: 3 }.owns(4));
        assert!(!Shard { index: 1, count: 3 }.owns(5));
    }
}
