"""Which run a directory holds: its resolved config (config.yaml), a digest of it, and the check that a
directory about to be resumed holds a run of the same kind and config (before anything in it is replaced)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Optional

from cnnlab.engine.config import ConfigError, config_diff
from cnnlab.utils.configdiff import mismatch_message
from cnnlab.utils.io import load_yaml_text

#: top-level config keys that mark a run directory of another kind than a plain training run
KIND_KEYS = {"population": "a population run (cnnlab population train)", "es": "an evolution-strategies run (cnnlab population es)"}


def canonical(config: dict[str, Any]) -> dict[str, Any]:
    """The config as plain JSON types (lists, not tuples), so a dict and its YAML round trip compare equal."""
    return json.loads(json.dumps(config, sort_keys=True, default=str))


def config_digest(config: dict[str, Any]) -> str:
    """A short, stable hash of a resolved config (sorted-key JSON, SHA-256, 16 hex digits)."""
    text = json.dumps(canonical(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def saved_config(run_dir: str | Path) -> Optional[dict[str, Any]]:
    """The config.yaml of ``run_dir`` as a dict, None if there is none; a ConfigError if it is unreadable."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return None
    try:
        raw = load_yaml_text(path.read_text(encoding="utf-8"))
    except Exception as e:  # noqa: BLE001  (yaml errors and decoding errors alike)
        raise ConfigError(f"{path} is unreadable ({type(e).__name__}); it is not a run directory cnnlab can resume") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} does not hold a config mapping; it is not a run directory cnnlab can resume")
    return canonical(raw)


def run_kind(config: dict[str, Any]) -> str:
    """"train", or the kind named by a marker key (population, es)."""
    return next((k for k in KIND_KEYS if k in config), "train")


def describe_diff(old: dict[str, Any], new: dict[str, Any], limit: int = 6) -> str:
    """``key (stored -> asked), ...`` for the first ``limit`` differing keys."""
    diff = config_diff(canonical(old), canonical(new))
    text = ", ".join(f"{k} ({a!r} -> {b!r})" for k, a, b in diff[:limit])
    return text + (f" and {len(diff) - limit} more" if len(diff) > limit else "")


def check_same_run(run_dir: str | Path, config: dict[str, Any], *, action: str = "resume", kind_only: bool = False,
                   ignore: tuple[str, ...] = ()) -> None:
    """Refuse (ConfigError) when ``run_dir`` holds a run of another kind or (unless ``kind_only``) another
    config than ``config``; dotted keys in ``ignore`` may differ (the caller checks them: e.g. the Trainer
    lets ``train.epochs`` grow on resume)."""
    stored = saved_config(run_dir)
    if stored is None:
        return
    want = canonical(config)
    have_kind, want_kind = run_kind(stored), run_kind(want)
    if have_kind != want_kind:
        what = KIND_KEYS.get(have_kind, "a training run (cnnlab train)")
        raise ConfigError(f"cannot {action} {run_dir}: it holds {what}, not {KIND_KEYS.get(want_kind, 'a training run')}; nothing was changed. "
                          "Pick another --out")
    if stored != want and not kind_only and any(k not in ignore for k, _, _ in config_diff(stored, want)):
        raise ConfigError(mismatch_message(action, run_dir, config_diff(stored, want), hint=(
            "Nothing was changed (config.yaml holds the stored settings). Pick another --out, or resume with the stored settings")))
