"""``cnnlab data list | info | download``: browse datasets, check their files, fetch them explicitly."""

from __future__ import annotations

import contextlib
import inspect
from pathlib import Path
from typing import Any, Iterator, Optional

import typer

from cnnlab.cli.common import fail
from cnnlab.utils.console import console, err_console, print_json, print_table

app = typer.Typer(help="Datasets: list, inspect, download (downloads happen only here).", no_args_is_help=True)

ROOT_OPT = typer.Option(None, "--data-root", help="Data folder (default: $CNNLAB_DATA or ~/.cache/cnnlab).")
OPTION_OPT = typer.Option(None, "--set", help="Source option key=value (repeatable), e.g. --set split=letters.")


def _root(root: Optional[Path]) -> Path:
    from cnnlab.data import default_root

    return Path(root).expanduser() if root else default_root()


def _parse_options(items: Optional[list[str]]) -> dict[str, Any]:
    import yaml

    from cnnlab.utils.io import load_yaml_text

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            fail(f"--set expects key=value, got {item!r}")
        try:
            out[key.strip()] = load_yaml_text(value) if value.strip() else value
        except yaml.YAMLError:
            out[key.strip()] = value
    return out


def _read_checksums(path: Optional[Path]) -> Optional[dict[str, str]]:
    """A JSON or YAML mapping of file name -> checksum ('md5:<hex>' / 'sha256:<hex>')."""
    if path is None:
        return None
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        fail(f"cannot read --checksums file {path}: {e}")
    except UnicodeDecodeError as e:
        fail(f"--checksums file {path} is not UTF-8 text (byte {e.start}: {e.reason})")
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        fail(f"--checksums file {path} must map file names to checksums, e.g. {{\"gzip.zip\": \"md5:...\"}}")
    return data


def _inputs(root: Optional[Path], option: Optional[list[str]], checksums: Optional[Path]
            ) -> tuple[Path, dict[str, Any], Optional[dict[str, str]]]:
    """A command's data folder, ``--set`` options and ``--checksums`` overrides, checked."""
    return _root(root), _parse_options(option), _read_checksums(checksums)


def _message(e: BaseException) -> str:
    return str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    """Turn data problems (missing/corrupt files, bad options) into a clear CLI error."""
    from cnnlab.data.errors import DataError

    try:
        yield
    except (DataError, ValueError, KeyError, TypeError) as e:
        fail(_message(e))


def _summary(ds: Any) -> dict[str, Any]:
    return {
        "dataset": ds.name, "train_size": len(ds.train), "test_size": len(ds.test),
        "shape": list(ds.train.images.shape[1:]), "num_classes": ds.num_classes, "classes": list(ds.classes),
        "mean": [round(v, 6) for v in ds.mean], "std": [round(v, 6) for v in ds.std],
    }


@app.command("list")
def list_cmd(
    root: Optional[Path] = ROOT_OPT,
    json_out: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """List dataset sources, how each is obtained, and whether downloadable ones are on disk."""
    from cnnlab.data import list_datasets
    from cnnlab.data.dataset import source_info
    from cnnlab.data.remote import file_status

    base = _root(root)
    rows = []
    for name in list_datasets():
        info = source_info(name)
        status = {"embedded": "available", "procedural": "generated", "local": "needs path"}.get(info.kind, "")
        if info.kind == "download":
            files = file_status(name, base, verify=False)
            have = sum(f["present"] for f in files)
            status = "downloaded" if have == len(files) else ("partial" if have else "not downloaded")
        rows.append({"name": name, "kind": info.kind, "status": status, "description": info.description})
    if json_out:
        print_json(rows)
    else:
        print_table(f"{len(rows)} datasets in {base}", ["name", "kind", "status", "description"],
                    [(r["name"], r["kind"], r["status"], r["description"]) for r in rows])


@app.command("info")
def info_cmd(
    name: str,
    root: Optional[Path] = ROOT_OPT,
    option: Optional[list[str]] = OPTION_OPT,
    checksums: Optional[Path] = typer.Option(None, "--checksums", help="JSON/YAML file: file name -> checksum override."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Checksum the source files on disk."),
    json_out: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Sizes, shape, classes, source files and whether they verify (never downloads)."""
    from cnnlab.data import load_dataset
    from cnnlab.data.dataset import source_info, source_options
    from cnnlab.data.remote import file_status, remote_cache_path

    base, opts, sums = _inputs(root, option, checksums)
    with _user_errors():
        info = source_info(name)
        defaults = {k: (None if v is inspect.Parameter.empty else v)
                    for k, v in source_options(name).items() if k not in ("checksums", "mirror")}
        out: dict[str, Any] = {"name": name, "kind": info.kind, "description": info.description,
                               "options": defaults | opts}
        loadable = True
        if info.kind == "download":
            if sums is not None:
                opts["checksums"] = sums
            files = file_status(name, base, checksums=sums, verify=verify)
            cache = remote_cache_path(name, base, {k: v for k, v in (defaults | opts).items() if k != "checksums"}, sums)
            out["files"] = files
            out["cache"] = {"path": str(cache), "present": cache.exists()}
            loadable = cache.exists() or all(f["present"] and f["verifies"] is not False for f in files)
            out["status"] = "cached" if cache.exists() else ("downloaded" if loadable else "not downloaded")
        if loadable:
            ds = load_dataset(name, base, download=False, **opts)
            out.update(_summary(ds))
            if "cache" in ds.meta:
                out["cache"] = {"path": ds.meta["cache"], "present": True}
    if json_out:
        print_json(out)
        return
    rows = [(k, v) for k, v in out.items() if k not in ("files", "classes", "cache")]
    if "classes" in out:
        cls = out["classes"]
        rows.append(("classes", ", ".join(cls[:20]) + (f", ... ({len(cls)} in all)" if len(cls) > 20 else "")))
    if "cache" in out:
        rows.append(("cache", f"{out['cache']['path']} ({'present' if out['cache']['present'] else 'absent'})"))
    print_table(name, ["field", "value"], rows)
    if "files" in out:
        print_table("source files", ["file", "present", "verifies", "expected", "path"],
                    [(f["file"], f["present"], "-" if f["verifies"] is None else f["verifies"], f["expected"], f["path"])
                     for f in out["files"]])
        if out["status"] == "not downloaded":
            err_console.print(f"not downloaded: run `cnnlab data download {name}` or place the files by hand")


class _Progress:
    """Per-file download progress on stderr (a rich progress bar)."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                 TransferSpeedColumn(), console=err_console, transient=False)

    def __call__(self, file: str):
        task = self.progress.add_task(file, total=None)

        def update(done: int, total: Optional[int]) -> None:
            self.progress.update(task, completed=done, total=total)

        return update


@app.command("download")
def download_cmd(
    name: str,
    root: Optional[Path] = ROOT_OPT,
    mirror: Optional[str] = typer.Option(None, "--mirror", help="Base URL replacing the official one."),
    checksums: Optional[Path] = typer.Option(None, "--checksums", help="JSON/YAML file: file name -> checksum override."),
    option: Optional[list[str]] = OPTION_OPT,
    json_out: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Download (resuming partial files), verify checksums, and decode into the cache."""
    from cnnlab.data import load_dataset
    from cnnlab.data.dataset import source_info
    from cnnlab.data.remote import ensure_files

    base, opts, sums = _inputs(root, option, checksums)
    with _user_errors():
        info = source_info(name)
        if info.kind != "download":  # nothing to fetch: succeed, as pip does for a satisfied requirement
            _nothing_to_download(name, info.kind, base, opts, json_out)
            return
        bar = _Progress()
        with bar.progress:
            paths = ensure_files(name, base, download=True, mirror=mirror, checksums=sums,
                                 progress=None if json_out else bar)
        extra = {"checksums": sums} if sums is not None else {}
        ds = load_dataset(name, base, download=False, mirror=mirror, **extra, **opts)
    out = {"files": {k: str(v) for k, v in paths.items()}, **_summary(ds), "cache": ds.meta.get("cache")}
    if json_out:
        print_json(out)
    else:
        print_table(f"{name}: downloaded and verified", ["field", "value"],
                    [(k, v) for k, v in out.items() if k not in ("classes", "files")]
                    + [("files", "\n".join(out["files"].values()))])


def _nothing_to_download(name: str, kind: str, base: Path, opts: dict, json_out: bool) -> None:
    """``data download`` of an embedded, procedural or local source: report what it is, download nothing."""
    from cnnlab.data import load_dataset

    why = {"embedded": "ships with cnnlab", "procedural": "is generated on the fly",
           "local": "reads your own files"}.get(kind, f"is {kind}")
    out: dict = {"dataset": name, "kind": kind, "downloaded": False, "reason": f"{name} {why}: nothing to download"}
    if kind in ("embedded", "procedural"):
        out.update(_summary(load_dataset(name, base, download=False, **opts)))
    if json_out:
        print_json(out)
    else:
        console.print(out["reason"], highlight=False, markup=False)


__all__ = ["app"]
