"""The real-WebUI kit: build tiny checkpoints, start an A1111 WebUI or a Forge on loopback, talk to it over HTTP.

Standard library only: it runs in the project's dev venv, while the WebUI runs in its own Python. Nothing here
clones, installs or patches the WebUI. Everything the kit writes (checkpoints, the WebUI's data folder with
``config.json``, ``extensions/`` and outputs, the server logs) lies in a folder of its own; the WebUI's
checkout is only read. Configuration, all from the environment:

``WEBUI_DIR``            the installed A1111 (>= 1.9) checkout.
``FORGE_DIR``            an installed Stable Diffusion WebUI Forge checkout instead (it wins when both are set);
                         the kit skips when neither is set.
``WEBUI_PYTHON``         its Python (default: ``<checkout>/venv/bin/python``, then ``venv/Scripts/python.exe``).
``WEBUI_KIT_FAMILIES``   tiny checkpoints to build, comma list of ``sd1,sd2v,sdxl`` (default: all three; Forge:
                         ``sd1`` only, see :data:`HOST_FAMILIES`).
``WEBUI_KIT_DIR``        where the kit writes (default: a fresh temporary folder, removed unless kept).
``WEBUI_KIT_KEEP``       ``1`` keeps that folder (logs, checkpoints) after the run and prints its path.
``WEBUI_KIT_START_S``    seconds to wait for a server to answer (default 240).
``WEBUI_KIT_CHROMIUM``   the browser suite's Chromium (default: ``chromium`` or ``chromium-browser`` on PATH).
``WEBUI_KIT_SHOTS``      where the browser suite saves screenshots (default: a new folder under the system
                         temporary folder, ``webui-kit-shots-<time>``); kept after the run, its path is printed.
``CONTROLNET_DIR``       a checkout of Mikubill/sd-webui-controlnet (A1111); the ControlNet scenarios skip without
                         it. Its requirements must already be in the WebUI's environment (its installer does not run
                         under the kit's ``--skip-install``).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
EXTENSION_NAME = "resolution-chromatography"
EXTENSION_TITLE = "Resolution Chromatography"
FAMILIES = ("sd1", "sd1inpaint", "sd2v", "sdxl")
CONTROLNET_NAME = "sd-webui-controlnet"
TINY_CONTROLNET = "tiny-sd1-controlnet"
TINY_LORA = "tiny-sd1-lora"
SKIP_REASON = (
    "WEBUI_DIR and FORGE_DIR are unset: the real-WebUI kit needs an installed A1111 WebUI >= 1.9 or a Forge "
    "(see tests/webui/README.md)"
)
#: The families each host's kit can build: Forge's loader builds the text encoders and the VAE at full size from its
#: own configs, so only a shallow SD1.5 (464 MiB) is small enough; SD2-v (OpenCLIP-H) and SDXL (CLIP-G) are not.
HOST_FAMILIES = {"a1111": FAMILIES, "forge": ("sd1",)}
#: Size limit of one tiny checkpoint per host (MiB).
MAX_CHECKPOINT_MIB = {"a1111": 40, "forge": 480}

# Settings for every server the kit starts (written to the data folder's config.json before start):
# "Approx NN" live previews would download a VAE-approx model for SDXL; the UI must not open a browser.
BASE_CONFIG: dict[str, Any] = {
    "show_progress_type": "Approx cheap",
    "auto_launch_browser": "Disable",
    "samples_save": False,
    "grid_save": False,
}

# Environment for the WebUI process: offline, one thread (the machine is shared), deterministic.
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "GRADIO_ANALYTICS_ENABLED": "False",
    "DO_NOT_TRACK": "1",
    "PYTHONUNBUFFERED": "1",
}

LAUNCH_FLAGS = [
    "--skip-prepare-environment",
    "--skip-torch-cuda-test",
    "--skip-version-check",
    "--skip-install",
    "--use-cpu",
    "all",
    "--no-half",
    "--precision",
    "full",
    "--api",
    "--server-name",
    "127.0.0.1",
    "--no-download-sd-model",
]
# Forge: --always-cpu keeps it on the CPU (A1111's --use-cpu does not; without it Forge dies at import, "Found no
# NVIDIA driver"), --attention-pytorch is 2-3x faster there than its default on a CPU.
FORGE_LAUNCH_FLAGS = [
    "--always-cpu",
    "--skip-prepare-environment",
    "--skip-torch-cuda-test",
    "--skip-version-check",
    "--skip-install",
    "--no-half",
    "--attention-pytorch",
    "--api",
    "--server-name",
    "127.0.0.1",
    "--no-download-sd-model",
]


# With the UI, A1111 (1.10, starlette 0.26) launches Gradio's server first and adds its own middleware and API
# afterwards; one HTTP request in between builds the middleware stack, and A1111 then dies with "Cannot add
# middleware after an application has started". So the kit sends nothing until the log says it is done.
UI_READY_LINE = "Startup time:"


def host() -> str | None:
    """``forge`` when ``FORGE_DIR`` is set, else ``a1111`` when ``WEBUI_DIR`` is set, else None."""
    if os.environ.get("FORGE_DIR", "").strip():
        return "forge"
    if os.environ.get("WEBUI_DIR", "").strip():
        return "a1111"
    return None


def webui_dir() -> Path | None:
    """The checkout the kit runs against (``FORGE_DIR``, else ``WEBUI_DIR``), or None when neither is set."""
    name = host()
    if name is None:
        return None
    value = os.environ["FORGE_DIR" if name == "forge" else "WEBUI_DIR"].strip()
    return Path(value).expanduser().resolve()


def is_forge() -> bool:
    """Whether the kit runs against Forge."""
    return host() == "forge"


def not_built(family: str) -> str:
    """The skip reason for a scenario that needs a checkpoint the kit did not build."""
    if family not in HOST_FAMILIES[host() or "a1111"]:
        return f"tiny-{family} not built: Forge's loader needs full-size text encoders for it (tests/webui/README.md)"
    return f"tiny-{family} not built (WEBUI_KIT_FAMILIES)"


def controlnet_dir() -> Path | None:
    """The ControlNet extension checkout (``CONTROLNET_DIR``), or None when unset."""
    value = os.environ.get("CONTROLNET_DIR", "").strip()
    return Path(value).expanduser().resolve() if value else None


def webui_python(root: Path) -> Path:
    """The WebUI's own interpreter: ``WEBUI_PYTHON``, else the checkout's ``venv``."""
    value = os.environ.get("WEBUI_PYTHON", "").strip()
    if value:
        return Path(value).expanduser()
    for candidate in (root / "venv" / "bin" / "python", root / "venv" / "Scripts" / "python.exe"):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"no Python found in {root}/venv; set WEBUI_PYTHON to the WebUI's interpreter")


def find_chromium() -> Path | None:
    """The Chromium the browser suite drives: ``WEBUI_KIT_CHROMIUM``, else ``chromium`` / ``chromium-browser`` on
    PATH (Debian: ``apt-get install chromium``); None when there is none. Playwright's own browser download is never
    used."""
    value = os.environ.get("WEBUI_KIT_CHROMIUM", "").strip()
    if value:
        path = Path(value).expanduser()
        return path if path.is_file() and os.access(path, os.X_OK) else None
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return Path(found)
    return None


def screenshot_dir() -> Path:
    """A folder for the browser suite's screenshots (``WEBUI_KIT_SHOTS``, else a new one under the temporary
    folder). It is never inside the checkout unless asked for, and it is kept after the run."""
    value = os.environ.get("WEBUI_KIT_SHOTS", "").strip()
    if value:
        path = Path(value).expanduser().resolve()
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = Path(tempfile.gettempdir()) / f"webui-kit-shots-{stamp}-{os.getpid()}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def build_checkpoints(root: Path, python: Path, out: Path, families: tuple[str, ...]) -> dict[str, Path]:
    """Run ``make_checkpoints.py`` (A1111) or ``make_forge_checkpoint.py`` (Forge: SD1 only) with the WebUI's
    Python; return family -> ``.safetensors`` path."""
    if is_forge():
        families = tuple(f for f in families if f in HOST_FAMILIES["forge"])
    wanted = [f for f in families if not (out / f"tiny-{f}.safetensors").exists()]
    if wanted:
        if is_forge():
            cmd = [str(python), str(Path(__file__).with_name("make_forge_checkpoint.py")), "--forge-dir", str(root)]
            cmd += ["--out", str(out)]
        else:
            cmd = [str(python), str(Path(__file__).with_name("make_checkpoints.py")), "--webui-dir", str(root)]
            cmd += ["--out", str(out), "--families", ",".join(wanted)]
        env = dict(os.environ, **OFFLINE_ENV)
        done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=900, check=False)
        if done.returncode != 0:
            tail = f"{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
            raise RuntimeError(f"make_checkpoints.py failed ({done.returncode}):\n{tail}")
    return {f: out / f"tiny-{f}.safetensors" for f in families}


class HTTPStatusError(AssertionError):
    """A request that did not answer 200; keeps the status and the decoded body."""

    def __init__(self, status: int, body: Any, path: str) -> None:
        super().__init__(f"{path}: HTTP {status}: {str(body)[:2000]}")
        self.status = status
        self.body = body


@dataclass
class WebUI:
    """One running WebUI server started by the kit."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    data_dir: Path
    checkpoints: dict[str, Path] = field(default_factory=dict)
    host: str = "a1111"

    def request(self, method: str, path: str, payload: Any = None, timeout: float = 300) -> tuple[int, Any]:
        """Send one JSON request; return (status, decoded body); never raises for an HTTP error status."""
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as err:
            status, raw = err.code, err.read()
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        return status, body

    def get(self, path: str) -> Any:
        """GET a JSON endpoint; raise :class:`HTTPStatusError` unless it answers 200."""
        status, body = self.request("GET", path)
        if status != 200:
            raise HTTPStatusError(status, body, path)
        return body

    def post(self, path: str, payload: Any, timeout: float = 300) -> Any:
        """POST JSON; raise :class:`HTTPStatusError` unless it answers 200."""
        status, body = self.request("POST", path, payload, timeout=timeout)
        if status != 200:
            raise HTTPStatusError(status, body, path)
        return body

    def txt2img(self, request_timeout: float = 300, **payload: Any) -> dict[str, Any]:
        """POST /sdapi/v1/txt2img with small defaults (4 steps, 128x128, seed 1, Euler); return the body
        (``request_timeout``: seconds to wait for it, e.g. longer for a request that fits resamplers to a
        full-size VAE on a CPU).

        The body's ``info`` is decoded from its JSON string into a dict. Forge's API quirks are respected: a hires-fix
        request gets ``hr_additional_modules: ["Use same choices"]`` (without it Forge fails with a TypeError) and an
        explicit ``hr_cfg`` equal to the CFG scale (it defaults to 1.0 over the API, which silently drops the
        negative prompt in the hires pass), unless the payload has its own.
        """
        full = {"prompt": "a red ball", "steps": 4, "width": 128, "height": 128, "seed": 1, "sampler_name": "Euler"}
        full.update(payload)
        if self.host == "forge" and full.get("enable_hr"):
            full.setdefault("hr_additional_modules", ["Use same choices"])
            full.setdefault("hr_cfg", full.get("cfg_scale", 7.0))
        body = self.post("/sdapi/v1/txt2img", full, timeout=request_timeout)
        body["info"] = json.loads(body["info"]) if isinstance(body.get("info"), str) else body.get("info")
        return body

    def healthy(self) -> bool:
        """True when the process runs and a cheap endpoint answers 200."""
        if self.process.poll() is not None:
            return False
        try:
            return self.request("GET", "/sdapi/v1/samplers", timeout=30)[0] == 200
        except OSError:
            return False

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the server's log, for failure messages."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout: float = 20) -> None:
        """Stop the server and everything it started (its own process group); idempotent."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=timeout)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.process.wait(timeout=timeout)


def image_bytes(b64: str) -> bytes:
    """Decode one image of a txt2img answer (base64 PNG, possibly as a data URL)."""
    return base64.b64decode(b64.split(",", 1)[1] if b64.startswith("data:") else b64)


def start_webui(
    root: Path,
    python: Path,
    workdir: Path,
    checkpoints: dict[str, Path],
    *,
    ckpt: str = "sd1",
    ui: bool = False,
    extension: bool = True,
    config: dict[str, Any] | None = None,
    extra_args: list[str] | None = None,
    env: dict[str, str] | None = None,
    extra_extensions: list[Path] | None = None,
    controlnet: bool = False,
) -> WebUI:
    """Start a fresh WebUI (own data folder, own port) on 127.0.0.1 and wait until its API answers.

    ``ui=False`` starts it API-only (``--nowebui``); ``ui=True`` with the Gradio UI too (the browser suite; the
    API answers only once the UI is built). ``extension`` links this checkout into the data folder's
    ``extensions/``; ``extra_extensions`` are folders (test-only extensions of the kit) copied there beside it;
    ``env`` adds environment variables for the server process. ``controlnet`` (A1111) links ``CONTROLNET_DIR`` into
    ``extensions/`` too, with the test-only ``ext_tiny_controlnet/`` that gives ControlNet's loader the tiny layout,
    and points ControlNet at the tiny ControlNet (``--controlnet-dir``) and at a preprocessor-model folder of the
    server's own. The tiny SD1 LoRA's folder is always the server's ``--lora-dir`` (A1111). The caller must call
    :meth:`WebUI.stop` (the fixtures do, always).

    Note: under ``--nowebui`` A1111 never runs ``on_ui_settings`` callbacks, so an extension's own options do
    not exist there (``override_settings`` for them is ignored); pass such switches through ``env``.
    """
    port = free_port()
    data_dir = workdir / f"data-{port}"
    (data_dir / "extensions").mkdir(parents=True)
    if extension:
        (data_dir / "extensions" / EXTENSION_NAME).symlink_to(REPO_ROOT, target_is_directory=True)
    extra_extensions = list(extra_extensions or [])
    proc_env_extra: dict[str, str] = {}
    ckpt_dir = checkpoints[ckpt].parent
    extra_args = list(extra_args or [])
    if controlnet:
        source = controlnet_dir()
        if source is None or is_forge():
            raise RuntimeError("controlnet=True needs CONTROLNET_DIR and A1111")
        (data_dir / "extensions" / CONTROLNET_NAME).symlink_to(source, target_is_directory=True)
        extra_extensions.append(Path(__file__).with_name("ext_tiny_controlnet"))
        from tests.webui.make_checkpoints import CONTROLNET_LAYOUT

        proc_env_extra["RC_KIT_CONTROLNET_LAYOUT"] = json.dumps(CONTROLNET_LAYOUT)
        extra_args += ["--controlnet-dir", str(ckpt_dir / "controlnet")]
        extra_args += ["--controlnet-annotator-models-path", str(data_dir / "controlnet-annotators")]
    if not is_forge() and (ckpt_dir / "lora").is_dir():
        extra_args += ["--lora-dir", str(ckpt_dir / "lora")]
    for folder in extra_extensions:
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        shutil.copytree(folder, data_dir / "extensions" / folder.name, ignore=ignore)
    settings = dict(BASE_CONFIG, **(config or {}))
    (data_dir / "config.json").write_text(json.dumps(settings, indent=1), encoding="utf-8")
    flags = FORGE_LAUNCH_FLAGS if is_forge() else LAUNCH_FLAGS
    args = [str(python), "launch.py", *flags, "--port", str(port), "--data-dir", str(data_dir)]
    args += ["--ckpt-dir", str(ckpt_dir), "--ckpt", str(checkpoints[ckpt])]
    if not ui:
        args.append("--nowebui")
    elif is_forge():
        # Gradio 4 serves files (the WebUI's own script.js and javascript/, the extension's) only from allowed paths,
        # which Forge sets to the data folder alone: with a data folder of its own, the UI would load no script.
        args += ["--gradio-allowed-path", str(root), "--gradio-allowed-path", str(REPO_ROOT)]
    args += extra_args
    proc_env = dict(os.environ, **OFFLINE_ENV, **proc_env_extra)
    proc_env["HF_HUB_CACHE"] = str(ckpt_dir / "hf-cache")  # the tiny OpenCLIP towers (see make_checkpoints.py)
    proc_env.pop("COMMANDLINE_ARGS", None)
    proc_env.update(env or {})
    log_path = workdir / f"webui-{port}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            args,
            cwd=root,
            env=proc_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    server = WebUI(f"http://127.0.0.1:{port}", process, log_path, data_dir, checkpoints, host() or "a1111")
    deadline = time.monotonic() + float(os.environ.get("WEBUI_KIT_START_S", "240"))
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"WebUI exited with {process.returncode} during startup:\n{server.log_tail()}")
            # With the UI, no request may arrive before A1111 has added its API: see UI_READY_LINE.
            if not ui or UI_READY_LINE in server.log_tail(1_000_000):
                try:
                    if server.request("GET", "/sdapi/v1/sd-models", timeout=10)[0] == 200:
                        break
                except OSError:
                    pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"WebUI did not answer within the start timeout:\n{server.log_tail()}")
            time.sleep(0.5)
    except BaseException:
        server.stop()
        raise
    mode = "with UI" if ui else "API only"
    print(f"[webui-kit] started {server.url} ({mode}; log {log_path})", file=sys.stderr)
    return server
