"""The README's spec for one's own image folder runs as written: `study plan` on it unchanged, and a
short `study run` (only the budget keys shrunk) on a folder of images this test draws."""

import re
from pathlib import Path

import pytest
import yaml
from cli_helpers import TINY_IMAGES_FAST, run_cli

README = Path(__file__).parents[2] / "README.md"


def readme_spec() -> dict:
    """The YAML block of the README that starts with '# my-images.yaml'."""
    blocks = re.findall(r"```yaml\n(.*?)```", README.read_text(), flags=re.S)
    (block,) = [b for b in blocks if b.startswith("# my-images.yaml")]
    return yaml.safe_load(block)


def draw_folder(root: Path, per_class: int = 24) -> Path:
    """4 class folders of 16x16 PNGs (the tiny-images shapes)."""
    from PIL import Image

    from trainables.data.images import tiny_images

    data = tiny_images(per_class * 4, 4, 16, seed=3)
    for k in range(4):
        (root / f"class{k}").mkdir(parents=True)
    for i, (x, y) in enumerate(zip(data.x, data.y)):
        pixels = (x.permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype("uint8")
        Image.fromarray(pixels).save(root / f"class{int(y)}" / f"{i}.png")
    return root


def test_the_readme_spec_is_short_and_names_the_folder_key():
    spec = readme_spec()
    assert spec["dataset"] == "folder" and "data.root" in spec["config"]
    block = next(b for b in re.findall(r"```yaml\n(.*?)```", README.read_text(), flags=re.S))
    assert len(block.strip().splitlines()) <= 16


@pytest.mark.slow
def test_the_readme_folder_spec_plans_and_runs(tmp_path):
    spec = readme_spec()
    spec["config"]["data.root"] = str(draw_folder(tmp_path / "my-images"))
    spec["storage"] = str(tmp_path / "studies")
    (tmp_path / "my-images.yaml").write_text(yaml.safe_dump(spec))
    plan = run_cli("plan", "my-images.yaml", cwd=tmp_path, timeout=300)
    assert plan.returncode == 0, plan.stderr[-2000:]
    assert "CG-SC-all@10%: 2 trial(s)" in plan.stdout and "eval_classifier x1" in plan.stdout
    # A short run: the budget keys shrunk, everything else as the README writes it.
    fast = {k: v for k, v in TINY_IMAGES_FAST.items() if not k.startswith("data.num")}
    spec["config"].update({**fast, "sample.num_per_class": 8})
    spec["trials_per_cell"] = 1
    (tmp_path / "short.yaml").write_text(yaml.safe_dump(spec))
    result = run_cli("run", "short.yaml", cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    study = tmp_path / "studies" / "my-images"
    text = (study / "tables" / "comparison.md").read_text()
    assert all(f"| {m} |" in text for m in spec["methods"]) and "gen_accuracy" in text
    assert (study / "figures" / "label_percent_gen_accuracy.pdf").exists()
    # An image spoiled after the run: the views read what the study wrote, not the images (every
    # `study status` read each image of the folder through twice); more work checks them again.
    spoiled = sorted((tmp_path / "my-images").rglob("*.png"))[5]
    spoiled.write_bytes(spoiled.read_bytes()[:40])
    for view in ("status", "table"):
        shown = run_cli(view, str(study), cwd=tmp_path, timeout=300)
        assert shown.returncode == 0, shown.stderr[-2000:]
    more = run_cli("resume", str(study), "--add-trials", "1", cwd=tmp_path, timeout=300)
    assert more.returncode == 2 and spoiled.name in more.stderr and "cannot be read" in more.stderr
    # The study where its images are not (copied to another machine): its status is its own.
    (tmp_path / "my-images").rename(tmp_path / "moved-images")
    shown = run_cli("status", str(study), cwd=tmp_path, timeout=300)
    assert shown.returncode == 0 and "not running now" in shown.stdout, shown.stderr[-2000:]
