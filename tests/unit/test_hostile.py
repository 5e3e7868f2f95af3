"""Hostile input: what whoever can trigger a run may put in `-S` overrides and `data.source`.

Output paths that leave the project, archive members that escape the raw folder, sources too
large or too many, protocols nobody allowed, secrets in URLs: each is refused in one line (or,
for secrets, kept out of every record), and nothing is written or deleted on the way.
"""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tasks import ingest
from tasks.config import ConfigError, Paths, load_config
from tasks.redact import MASK, has_secrets, redact, redact_url
from tasks.sources import DataError

PASSWORD = "hunter2-pw-9f3a"
SIGNATURE = "X-Amz-Signature=5e1f0c7d9a8b4e2f"
PATH_KEYS = list(Paths.model_fields)


def cfg_for(workspace: Path, *overrides: str):
    return load_config(workspace / "params.yaml", list(overrides))


def refused(workspace: Path, *overrides: str) -> str:
    with pytest.raises(ConfigError) as err:
        cfg_for(workspace, *overrides)
    message = str(err.value)
    assert "\n" not in message
    return message


def png(value: int, size: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


# -- paths.* ------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", PATH_KEYS)
@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("/anything", "'/anything' is absolute: use a path relative to the project root"),
        ("../outside", "'../outside' leaves the project (..): keep it inside"),
    ],
)
def test_every_path_key_refuses_absolute_and_escaping_paths(workspace, key, value, problem):
    assert refused(workspace, f"paths.{key}={value}") == f"{workspace / 'params.yaml'}: " + (
        f"paths.{key}: {problem}"
    )


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("data/../../x", "'data/../../x' leaves the project (..)"),
        (".", "'.' is the project root itself"),
        ("data/..", "'data/..' is the project root itself"),
        ("~/ckpt", "'~/ckpt' is absolute"),
        ("C:/ckpt", "'C:/ckpt' is absolute"),
        ("file:///tmp/ckpt", "'file:///tmp/ckpt' is absolute"),
        ("data\\..\\x", "use forward slashes"),
        ("tasks", "'tasks' is inside the project's own tasks"),
        (".git/objects", "inside the project's own .git"),
        ("params.yaml", "inside the project's own params.yaml"),
        ("", "must be a relative path inside the project"),
    ],
)
def test_path_forms_that_would_reach_outside_or_the_code_are_refused(workspace, value, problem):
    assert problem in refused(workspace, f"paths.checkpoint_dir={value}")


def test_one_output_path_may_not_hold_another(workspace):
    assert refused(workspace, "paths.checkpoint_dir=data").endswith(
        "paths: paths.checkpoint_dir 'data' holds paths.raw_dir 'data/raw': keep outputs apart "
        "(a stage replaces its folder)"
    )
    assert refused(workspace, "paths.train_dir=data/raw").endswith(
        "paths: paths.raw_dir and paths.train_dir are both 'data/raw': keep outputs apart"
    )


def test_paths_are_normalized_and_may_nest(workspace):
    cfg = cfg_for(workspace, "paths.checkpoint_dir=./data//ckpt/../checkpoints/")
    assert cfg.paths.checkpoint_dir == "data/checkpoints"


def test_cli_refuses_an_absolute_checkpoint_dir_and_deletes_nothing(
    workspace, tmp_path_factory, capsys
):
    from flows.cli import main

    victim = tmp_path_factory.mktemp("victim")
    (victim / "keep.txt").write_text("precious")
    before = (workspace / "params.yaml").read_text()
    with pytest.raises(SystemExit) as exc:
        main(["train", "-S", f"paths.checkpoint_dir={victim}"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert (
        err
        == f"dlops: params.yaml: paths.checkpoint_dir: '{victim}' is absolute: use a path "
        + ("relative to the project root")
    )
    assert (victim / "keep.txt").read_text() == "precious"
    assert (workspace / "params.yaml").read_text() == before


def test_a_symlink_out_of_the_project_is_refused_at_use_time(workspace, tmp_path_factory):
    outside = tmp_path_factory.mktemp("elsewhere")
    (workspace / "data").symlink_to(outside, target_is_directory=True)
    message = refused(workspace)
    assert message.startswith(f"paths.raw_dir: data/raw: resolves to {outside.resolve()}/raw")
    assert f"outside the project {workspace.resolve()} (a symbolic link?)" in message
    # a file DVC links from a shared cache is fine: only the folder holding it counts
    (workspace / "data").unlink()
    (workspace / "reports").mkdir()
    (outside / "metrics.json").write_text("{}")
    (workspace / "reports" / "metrics.json").symlink_to(outside / "metrics.json")
    assert cfg_for(workspace).paths.metrics == "reports/metrics.json"


# -- data.source: protocols and secrets at config time -----------------------------------------


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ("ftp://host/x.csv", "protocol 'ftp' is not allowed (data.protocols: local, file, http"),
        ("memory://x.csv", "protocol 'memory' is not allowed"),
        ("simplecache::https://h/x.csv", "protocol 'simplecache' cannot wrap another source"),
        ("zip://x.csv::ftp://h/a.zip", "protocol 'ftp' is not allowed"),
        ("zip://pets", "zip:// needs the archive's location after '::'"),
        ("env:HOME", "'env:HOME': env: reads only variables named DLOPS_DATA..."),
        ("env:DLOPS_DATA_URL", "the environment variable DLOPS_DATA_URL is not set"),
    ],
)
def test_sources_nobody_allowed_are_refused_at_config_time(workspace, source, problem):
    message = refused(workspace, f"data.source={source}")
    assert message.startswith(f"{workspace / 'params.yaml'}: data.source: ")
    assert problem in message


def test_the_protocol_list_is_a_parameter(workspace):
    local_only = "data.protocols=[local]"
    assert "protocol 'https' is not allowed (data.protocols: local)" in refused(
        workspace, local_only, "data.source=https://h/x.csv"
    )
    assert "protocol 'file' is not allowed" in refused(
        workspace, local_only, "data.source=zip://pets::file:///x/a.zip"
    )
    assert cfg_for(workspace, local_only, "data.source=/x/a.csv").modality == "tables"
    assert "zip is allowed whenever the archive's own location is" in refused(
        workspace, "data.protocols=[local, zip]"
    )


@pytest.mark.parametrize(
    "source",
    [
        f"https://user:{PASSWORD}@host/people.csv",
        f"https://host/people.csv?{SIGNATURE}",
        f"zip://pets::https://host/imgs.zip?{SIGNATURE}",
    ],
)
def test_a_secret_bearing_url_in_params_is_refused_saying_what_to_do(workspace, source):
    message = refused(workspace, f"data.source={source}")
    assert "a URL with credentials or a query string must not be in params.yaml" in message
    assert "export DLOPS_DATA_URL='<the URL>' and set data.source=env:DLOPS_DATA_URL" in message
    assert PASSWORD not in message and "5e1f0c7d9a8b4e2f" not in message


def test_a_bad_override_carrying_a_secret_is_redacted(workspace):
    message = refused(workspace, f"dataz.source=https://u:{PASSWORD}@h/x.csv")
    assert message == "override 'dataz.source=https://u:***@h/x.csv': unknown key 'dataz'"


def test_env_source_resolves_name_and_modality_and_is_recorded_redacted(workspace, monkeypatch):
    url = f"https://user:{PASSWORD}@host/dir/people.csv?{SIGNATURE}"
    monkeypatch.setenv("DLOPS_DATA_URL", url)
    cfg = cfg_for(workspace, "data.source=env:DLOPS_DATA_URL")
    assert (cfg.modality, cfg.data.name, cfg.model_name) == ("tables", "people", "dlops-people")
    assert cfg.data.resolved_source == url
    assert cfg.data.shown_source == f"https://user:{MASK}@host/dir/people.csv?{MASK}"
    assert cfg.model_dump()["data"]["source"] == "env:DLOPS_DATA_URL"


@pytest.mark.parametrize(
    ("source", "modality", "name"),
    [
        ("zip://pets::file:///x/imgs.zip", "images", "pets"),
        ("zip://::file:///x/imgs.zip", "images", "imgs"),
        ("tar://people.csv::https://host/a.tar.gz", "tables", "people"),
        ("zip://a/b.npz::tar://in.zip::file:///t.tar", "sequences", "b"),
    ],
)
def test_archive_chains_infer_from_the_member(workspace, source, modality, name):
    cfg = cfg_for(workspace, f"data.source={source}")
    assert (cfg.modality, cfg.data.name) == (modality, name)


def test_dlops_run_data_with_credentials_goes_through_the_environment(workspace):
    from flows.cli.run import data_overrides

    url = f"https://user:{PASSWORD}@host/people.csv?{SIGNATURE}"
    assert data_overrides(url)[0] == "data.source=env:DLOPS_DATA_URL"
    assert os.environ["DLOPS_DATA_URL"] == url
    assert data_overrides("https://host/people.csv")[0] == "data.source=https://host/people.csv"


# -- archives and fsspec sources at ingest ------------------------------------------------------


def image_members(prefix: str = "pets/") -> dict[str, bytes]:
    return {
        f"{prefix}{cls}/{i}.png": png(40 * k + i)
        for k, cls in enumerate(["cat", "dog"])
        for i in range(6)
    }


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def write_tar(path: Path, members: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            t.addfile(info)
    return path


def test_image_folders_inside_zip_and_tar_are_ingested(workspace, tmp_path):
    z = write_zip(tmp_path / "imgs.zip", image_members())
    t = write_tar(tmp_path / "imgs.tar.gz", image_members("set/"))
    for source in (f"zip://pets::file://{z}", f"tar://set::file://{t}"):
        cfg = cfg_for(workspace, f"data.source={source}")
        m = ingest.run(cfg).manifest
        assert (m.modality, m.classes, m.rows, m.source) == ("images", ["cat", "dog"], 12, source)
        copied = Path(cfg.paths.raw_dir) / "images" / "dog" / "3.png"
        assert copied.read_bytes() == png(43)


ESCAPES = {
    "zip ..": ("zip", "pets", "pets/../../evil.png"),
    "zip absolute": ("zip", "", "/abs/evil.png"),
    "tar ..": ("tar", "pets", "pets/cat/../../../evil.png"),
}


@pytest.mark.parametrize("case", list(ESCAPES))
def test_an_archive_member_that_escapes_is_refused_and_nothing_is_written(
    workspace, tmp_path, case
):
    kind, root, evil = ESCAPES[case]
    members = {**image_members(), evil: png(1)}
    write = write_zip if kind == "zip" else write_tar
    archive = write(tmp_path / ("a.zip" if kind == "zip" else "a.tar.gz"), members)
    source = f"{kind}://{root}::file://{archive}"
    cfg = cfg_for(workspace, f"data.source={source}")
    with pytest.raises(DataError) as err:
        ingest.run(cfg)
    assert str(err.value) == (
        f"{source}: member {evil!r} escapes the destination (.. or an absolute path); "
        "refusing the source"
    )
    assert not Path(cfg.paths.raw_dir).exists()
    assert not list(tmp_path.rglob("evil.png")) and not list(workspace.rglob("evil.png"))


def test_a_link_inside_a_tar_is_refused(workspace, tmp_path):
    archive = write_tar(tmp_path / "a.tar.gz", image_members(), {"pets/cat/x.png": "/etc/passwd"})
    cfg = cfg_for(workspace, f"data.source=tar://pets::file://{archive}")
    with pytest.raises(DataError, match=r"member 'pets/cat/x.png' is a link out of the source"):
        ingest.run(cfg)
    assert not Path(cfg.paths.raw_dir).exists()


def test_a_local_folder_may_link_inside_itself_not_out(workspace, tmp_path_factory):
    pets = tmp_path_factory.mktemp("pets")
    for name, data in image_members("").items():
        (pets / name).parent.mkdir(parents=True, exist_ok=True)
        (pets / name).write_bytes(data)
    (pets / "dog" / "again.png").symlink_to(pets / "cat" / "0.png")
    m = ingest.run(cfg_for(workspace, f"data.source={pets}")).manifest
    assert m.rows == 13
    secret = tmp_path_factory.mktemp("private") / "key.png"
    secret.write_bytes(png(7))
    (pets / "cat" / "stolen.png").symlink_to(secret)
    cfg = cfg_for(workspace, f"data.source={pets}")
    with pytest.raises(DataError) as err:
        ingest.run(cfg)
    assert str(err.value) == (
        f"{pets}: member '{pets}/cat/stolen.png' is a link out of the source; links are not "
        "followed"
    )


def test_too_many_files_is_refused_before_copying(workspace, tmp_path):
    archive = write_zip(tmp_path / "imgs.zip", image_members())
    source = f"zip://pets::file://{archive}"
    cfg = cfg_for(workspace, f"data.source={source}", "data.max_files=11")
    with pytest.raises(DataError) as err:
        ingest.run(cfg)
    assert str(err.value) == f"{source}: more than 11 files (data.max_files); refusing it"
    assert not Path(cfg.paths.raw_dir).exists()


def test_too_many_bytes_is_refused_from_the_declared_size(workspace, tmp_path):
    src = tmp_path / "t.csv"
    src.write_text("a,target\n" + "1,0\n" * 100)
    cfg = cfg_for(workspace, f"data.source={src}", "data.max_bytes=100")
    with pytest.raises(DataError) as err:
        ingest.run(cfg)
    assert str(err.value) == f"{src}: declares more than 100 bytes (data.max_bytes); refusing it"
    assert not Path(cfg.paths.raw_dir).exists()


def test_an_http_body_without_length_is_streamed_and_cut_at_the_limit(
    workspace, tmp_path, loopback
):
    big = tmp_path / "big.csv"
    big.write_bytes(b"a,target\n" + b"1,0\n" * (16 << 20))  # 64 MiB
    server = loopback(tmp_path)
    server.stream.add("/big.csv")
    url = server.url("big.csv")
    cfg = cfg_for(workspace, f"data.source={url}", f"data.max_bytes={1 << 20}")
    with pytest.raises(DataError) as err:
        ingest.run(cfg)
    assert (
        str(err.value) == f"{url}: holds more than {1 << 20} bytes (data.max_bytes); refusing it"
    )
    assert not Path(cfg.paths.raw_dir).exists()
    # streamed: the client stopped reading long before the body's end (socket buffers aside)
    assert server.sent.get("/big.csv", 0) < big.stat().st_size / 2


def test_a_failed_download_names_the_source_redacted_and_chains_the_cause(
    workspace, tmp_path, loopback, monkeypatch
):
    (tmp_path / "people.csv").write_text("a,target\n1,0\n")
    server = loopback(tmp_path, auth=f"user:{PASSWORD}")
    url = server.url("people.csv", userinfo="user:wrong-password-123", query=SIGNATURE)
    monkeypatch.setenv("DLOPS_DATA_URL", url)
    cfg = cfg_for(workspace, "data.source=env:DLOPS_DATA_URL")
    with pytest.raises(DataError) as err:
        ingest.run(cfg)
    message = str(err.value)
    assert message.startswith(f"{server.url('people.csv', 'user:***', '***')}: cannot read")
    assert "403" in message and "\n" not in message
    assert "wrong-password-123" not in message and "5e1f0c7d9a8b4e2f" not in message
    assert err.value.__cause__ is not None  # the library's error, for a traceback


def test_zip_over_http_with_a_presigned_query(workspace, tmp_path, loopback, monkeypatch):
    write_zip(tmp_path / "imgs.zip", image_members())
    server = loopback(tmp_path, query=SIGNATURE)
    monkeypatch.setenv("DLOPS_DATA_URL", f"zip://pets::{server.url('imgs.zip', query=SIGNATURE)}")
    cfg = cfg_for(workspace, "data.source=env:DLOPS_DATA_URL")
    m = ingest.run(cfg).manifest
    assert (m.rows, m.name, m.source) == (12, "pets", f"zip://pets::{server.url('imgs.zip')}?***")
    manifest = (Path(cfg.paths.raw_dir) / "manifest.json").read_text()
    assert "5e1f0c7d9a8b4e2f" not in manifest
    assert all(ok for _, ok in server.seen) and server.seen


# -- redaction ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            f"postgresql+psycopg2://app:{PASSWORD}@db:5432/optuna",
            "postgresql+psycopg2://app:***@db:5432/optuna",
        ),
        (f"https://h/x.csv?{SIGNATURE}&X-Amz-Date=1", "https://h/x.csv?***"),
        ("https://token@h/x.csv", "https://***@h/x.csv"),
        ("s3://bucket/x.csv", "s3://bucket/x.csv"),
        ("/local/path?.csv", "/local/path?.csv"),
    ],
)
def test_redact_url(url, shown):
    assert redact_url(url) == shown
    assert has_secrets(url) == (shown != url)


def test_redact_keeps_the_text_around_urls():
    text = f"https://u:{PASSWORD}@h/x.csv?{SIGNATURE}: cannot read (see https://h/doc)."
    assert redact(text) == "https://u:***@h/x.csv?***: cannot read (see https://h/doc)."


def test_secrets_held_in_url_variables_are_masked_anywhere(monkeypatch):
    monkeypatch.setenv("DLOPS_OPTUNA_STORAGE", f"postgresql://app:{PASSWORD}@db/optuna")
    monkeypatch.setenv("DLOPS_DATA_URL", f"https://h/x.csv?{SIGNATURE}")
    text = f"auth failed for password {PASSWORD}; signature 5e1f0c7d9a8b4e2f rejected"
    assert redact(text) == "auth failed for password ***; signature *** rejected"


REDACTION_SCRIPT = """
import logging, sys
from tasks.runtime import setup
setup()
url = sys.argv[1]
logging.getLogger("dlops").warning("fetching %s", url)
from prefect.logging import get_logger
get_logger("redaction-test").warning("fetching %s", url)
try:
    raise ConnectionError(f"cannot reach {url}")
except ConnectionError:
    logging.getLogger("dlops").exception("failed")
raise RuntimeError(f"gave up on {url}")
"""


def test_logs_and_uncaught_tracebacks_are_redacted(workspace):
    url = f"https://user:{PASSWORD}@host/x.csv?{SIGNATURE}"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    out = subprocess.run(
        [sys.executable, "-c", REDACTION_SCRIPT, url],
        cwd=workspace,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    text = out.stdout + out.stderr
    assert out.returncode == 1
    assert text.count("fetching https://user:***@host/x.csv?***") == 2  # dlops and Prefect
    assert "ConnectionError: cannot reach https://user:***@host/x.csv?***" in text
    assert "RuntimeError: gave up on https://user:***@host/x.csv?***" in text
    assert PASSWORD not in text and "5e1f0c7d9a8b4e2f" not in text


def test_the_filter_redacts_message_arguments_and_traceback():
    from tasks.redact import RedactFilter

    url = f"https://u:{PASSWORD}@h/x?{SIGNATURE}"
    try:
        raise OSError(f"refused: {url}")
    except OSError:
        exc_info = sys.exc_info()
    record = logging.LogRecord("dlops", logging.ERROR, __file__, 1, "get %s", (url,), exc_info)
    assert RedactFilter().filter(record) is True
    assert record.getMessage() == "get https://u:***@h/x?***"
    formatted = logging.Formatter().format(record)
    assert "OSError: refused: https://u:***@h/x?***" in formatted
    assert PASSWORD not in formatted and "5e1f0c7d9a8b4e2f" not in formatted
    # arguments without secrets stay as they are: formatters that unpack them keep working
    plain = logging.LogRecord(
        "uvicorn.access", logging.INFO, __file__, 1, "%s %d", ("GET", 200), None
    )
    RedactFilter().filter(plain)
    assert plain.args == ("GET", 200) and plain.getMessage() == "GET 200"
