"""Screenshot each example workflow (the UI-format ``*.json``) as ComfyUI's editor draws it, to ``*.png`` beside it.

Needs a running ComfyUI with this pack loaded (the graphs' model names need not exist), Playwright and a Chromium:

    pip install playwright            # any Chromium will do: --chromium /usr/bin/chromium, or `playwright install`
    python examples/workflows/screenshot.py --url http://127.0.0.1:8188 --chromium /usr/bin/chromium

Loading each file through the editor's own ``loadGraphData`` is also the check that the UI files open, and the
prompt the editor would queue from each (``graphToPrompt``) must equal the API-format file beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


async def shoot(url: str, chromium: str | None, names: list[str], width: int, height: int) -> None:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = await browser.new_page(viewport={"width": width, "height": height}, device_scale_factor=1)
        await page.goto(url, wait_until="networkidle")
        await page.wait_for_function("window.app && window.app.graph && window.app.canvas", timeout=120_000)
        for name in names:
            graph = json.loads((HERE / f"{name}.json").read_text())
            await page.keyboard.press("Escape")  # the start-up template dialog, if any
            errors = await page.evaluate(
                """async (graph) => {
                    await window.app.loadGraphData(graph, true, true, null);
                    const nodes = window.app.graph._nodes;
                    const missing = nodes.filter((n) => !n.constructor || n.type === undefined || n.has_errors);
                    window.app.canvas.ds.offset = [0, 0];
                    const xs = nodes.map((n) => n.pos[0]), ys = nodes.map((n) => n.pos[1]);
                    const x1 = Math.max(...nodes.map((n) => n.pos[0] + n.size[0]));
                    const y1 = Math.max(...nodes.map((n) => n.pos[1] + n.size[1]));
                    const x0 = Math.min(...xs) - 40, y0 = Math.min(...ys) - 70;
                    const el = window.app.canvasEl;
                    const scale = Math.min(el.width / (x1 - x0 + 40), el.height / (y1 - y0 + 40), 1.2);
                    window.app.canvas.ds.scale = scale;
                    window.app.canvas.ds.offset = [-x0, -y0];
                    window.app.canvas.setDirty(true, true);
                    return missing.map((n) => n.type);
                }""",
                graph,
            )
            if errors:
                raise SystemExit(f"{name}.json: nodes the editor could not build: {errors}")
            # what the editor would queue must be the API-format example, input for input
            queued = await page.evaluate("async () => (await window.app.graphToPrompt()).output")
            api = json.loads((HERE / f"{name}.api.json").read_text())
            diff = [
                (nid, k)
                for nid, node in api.items()
                for k, v in [("class_type", node["class_type"]), *node["inputs"].items()]
                if nid not in queued or {"class_type": queued[nid]["class_type"], **queued[nid]["inputs"]}.get(k) != v
            ]  # (widgets the editor alone has, like PreviewAny's "preview", are not in the API file)
            if diff or queued.keys() != api.keys():
                raise SystemExit(f"{name}: the editor would queue {queued}, not {name}.api.json (at {diff})")
            await page.wait_for_timeout(800)
            await page.locator("canvas#graph-canvas").screenshot(path=str(HERE / f"{name}.png"))
            print(f"wrote {HERE / f'{name}.png'}")
        await browser.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://127.0.0.1:8188")
    ap.add_argument("--chromium", default=None, help="a Chromium binary (default: Playwright's own)")
    ap.add_argument("--size", default="1600x900", help="viewport WxH")
    ap.add_argument("names", nargs="*", help="workflow names (default: every *.json but *.api.json)")
    args = ap.parse_args()
    names = args.names or sorted(p.stem for p in HERE.glob("*.json") if not p.name.endswith(".api.json"))
    w, h = (int(x) for x in args.size.split("x"))
    asyncio.run(shoot(args.url, args.chromium, names, w, h))


if __name__ == "__main__":
    main()
