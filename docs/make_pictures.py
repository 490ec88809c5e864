"""Regenerate the documentation's pictures from a real tracked run (`make pictures`).

    .venv/bin/python docs/make_pictures.py [--keep DIR]

Why a script: a screenshot drawn by hand goes stale the day the UI or the training changes. This one
trains the offline demo tracked into a throwaway store (`train_mlflow.py --preset demo --register demo`),
promotes it to @champion, copies the run folder's figures, then starts the store's own MLflow server
and has headless Chromium photograph the run's metric charts and the registered model. Everything it
writes lands in docs/images/ (small palette PNGs); `tests/test_docs.py` checks every picture the
docs reference exists.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "docs" / "images"
PY = sys.executable


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _small_png(src: Path, dest: Path, width: int) -> None:
    """Resized to `width` (never up) and stored with a 128-colour palette: a few tens of KB in git."""
    from PIL import Image

    with Image.open(src) as image:
        image = image.convert("RGB")
        if image.width > width:
            image = image.resize((width, round(image.height * width / image.width)), Image.LANCZOS)
        image.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(dest, optimize=True)


def _wait(url: str, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"error: the MLflow server exited ({proc.returncode}): see its output above")
        try:
            with urllib.request.urlopen(url, timeout=2):  # noqa: S310  (a local http URL we built)
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"error: the MLflow server did not answer {url} within {timeout:.0f} s")


class _Browser:
    """Headless Chromium driven over the DevTools protocol (websocket-client is in the lock): the MLflow
    UI draws its charts after its data arrives, so a shot is taken once the page shows them, not after a
    fixed budget of virtual time (which photographed loading spinners)."""

    def __init__(self, chromium: str, profile: Path) -> None:
        import json

        import websocket

        profile.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--remote-debugging-port=0", f"--user-data-dir={profile}", "--window-size=1280,800",
             "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        active = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not active.is_file() or not active.read_text().strip():
            if time.monotonic() > deadline:
                raise SystemExit("error: Chromium did not open its DevTools port within 60 s")
            time.sleep(0.2)
        port = active.read_text().split()[0]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            page = next(t for t in json.load(r) if t["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=60)
        self.ids = 0
        self.call("Emulation.setDeviceMetricsOverride", width=1280, height=800, deviceScaleFactor=1,
                  mobile=False)

    def call(self, method: str, **params: object) -> dict:
        import json

        self.ids += 1
        self.ws.send(json.dumps({"id": self.ids, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.ids:
                return message.get("result", {})

    def js(self, expression: str) -> object:
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def shoot(self, url: str, ready: str, dest: Path, timeout: float = 90) -> None:
        """Open url, wait until the JS expression `ready` is true (or timeout), close MLflow's assistant
        panel, and save the viewport."""
        import base64

        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + timeout
        while not self.js(ready) and time.monotonic() < deadline:
            time.sleep(0.5)
        # MLflow 3.17 opens its assistant panel on the right on a first visit: its "Close" button
        self.js("""[...document.querySelectorAll('button[aria-label="Close"]')]
                  .filter(b => b.getBoundingClientRect().x > 0.7 * innerWidth).forEach(b => b.click())""")
        time.sleep(2)
        raw = dest.with_suffix(".raw.png")
        raw.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))
        _small_png(raw, dest, 1280)
        raw.unlink()

    def close(self) -> None:
        self.ws.close()
        self.proc.terminate()
        self.proc.wait(timeout=30)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keep", type=Path, help="keep the store and run folder here (default: a temp folder)")
    args = p.parse_args(argv)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not chromium:
        print("error: no Chromium found: install it (apt-get install chromium) to take the screenshots",
              file=sys.stderr)
        return 2
    IMAGES.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        store, outputs = work / "store", work / "outputs"
        subprocess.run([PY, str(ROOT / "train_mlflow.py"), "--store", str(store), "--preset", "demo",
                        "--set", f"output_dir={outputs}", "--set", "run_name=demo-pictures",
                        "--set", f"cache_dir={work / 'cache'}", "--register", "demo"], check=True, cwd=ROOT)
        subprocess.run([PY, "-m", "kerasflow", "promote", "--store", str(store), "demo",
                        "--metric", "test_accuracy"], check=True, cwd=ROOT)
        for name in ("curves.png", "confusion_matrix.png"):
            _small_png(outputs / "demo-pictures" / name, IMAGES / name, 560)
        port = _free_port()
        server = subprocess.Popen([PY, "-m", "kerasflow", "server", str(store), "--port", str(port)],
                                  cwd=ROOT)
        try:
            url = f"http://127.0.0.1:{port}"
            _wait(f"{url}/health", server)
            import mlflow

            client = mlflow.MlflowClient(url)
            experiment = client.get_experiment_by_name("kerasflow")
            [run] = client.search_runs([experiment.experiment_id], "attributes.run_name = 'demo-pictures'")
            where = f"{url}/#/experiments/{experiment.experiment_id}/runs/{run.info.run_id}/model-metrics"
            browser = _Browser(chromium, work / "chromium")
            try:  # ready: the run's charts are drawn (plotly's svg), the model page lists its aliases
                browser.shoot(where, "document.querySelectorAll('.js-plotly-plot .main-svg').length >= 6",
                              IMAGES / "run_page.png")
                browser.shoot(f"{url}/#/models/demo", "document.body.innerText.includes('champion')",
                              IMAGES / "registered_model.png")
            finally:
                browser.close()
        finally:
            server.terminate()
            server.wait(timeout=60)
    for picture in sorted(IMAGES.glob("*.png")):
        print(f"{picture.relative_to(ROOT)}: {picture.stat().st_size // 1024} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
