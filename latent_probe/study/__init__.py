"""Studies: suites of prompt × seed × setting jobs, one run file each, resumable, data parallel under torchrun.

```python
from latent_probe.study import Suite, read_prompts, run_study
suite = Suite("fox", read_prompts("prompts.txt"), seeds=[0, 1], grid={"steps": [20, 30]})
run_study(suite, lambda job: pipe(..., num_inference_steps=job.settings["steps"]), pipe, "out")
```

Every run file carries the root attributes ``study``, ``job_id``, ``prompt_id``, ``prompt``, ``seed`` and
``setting_<name>`` per setting; ``<out>/manifest.json`` lists the jobs. See docs/studies.md.
"""

from .distributed import Ranks
from .jobs import Job, Prompt, StudyError, Suite, parse_seeds, parse_setting, parse_truncation, read_prompts
from .manifest import read_manifest, write_manifest
from .runner import JobStatus, StudyResult, job_status, plan_study, run_path, run_study, truncation_of

__all__ = [
    "Suite", "Prompt", "Job", "StudyError", "StudyResult", "JobStatus", "Ranks",
    "read_prompts", "parse_seeds", "parse_setting", "parse_truncation",
    "run_study", "plan_study", "job_status", "run_path", "truncation_of",
    "read_manifest", "write_manifest",
]
