"""Models in and out of the registry: a checkpoint trained elsewhere in, an ONNX graph or a Hugging Face style
folder out. No Prefect: `pixelmill models import|export` call these directly.

    import_model(ws, "RealESRGAN_x4plus.pth", "realesr")   any architecture spandrel detects -> realesr:vN
    export_onnx(ws, "realesr@production", "out.onnx")       dynamic batch, height and width; checked with ONNX Runtime
    export_folder(ws, "realesr@production", "out/")         weights.safetensors, config.json, metadata.json, README.md

An imported model is an arch of the factory ("spandrel", models/spandrel_net.py) with a card like a trained one:
its source is `import:FILE` with the file's sha256 and the licence the importer gave, so enhance, apply,
evaluate, promote and lineage treat it like any other version.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import tempfile
from datetime import datetime

from pixelmill.tasks.core import lineage, registry, storage
from pixelmill.tasks.core.cards import ModelCard
from pixelmill.tasks.core.errors import ConfigError, PixelmillError
from pixelmill.tasks.core.model_tasks import MODEL_TASKS
from pixelmill.tasks.core.names import check_name

IMPORT_TASKS = ("restoration",)  # spandrel's architectures are image in, image out: none segments
EXTENSIONS = (".pth", ".pt", ".ckpt", ".safetensors")  # what spandrel's loader reads
ONNX_CHECK_SIZES = ((37, 53), (64, 91), (101, 77))  # odd heights and widths, none the traced one twice
ONNX_TOLERANCE = 1e-3  # max |ONNX Runtime - torch| on [0, 1] inputs
FOLDER_FILES = ("weights.safetensors", "config.json", "metadata.json")  # copied as the registry holds them


# ---------------------------------------------------------------- in


def import_model(workspace: str, file: str, name: str, task: str = "restoration", licence: str = "unknown",
                 ) -> ModelCard:
    """Register the checkpoint at `file` (a path or URL: .pth, .pt, .ckpt, .safetensors) as a new version of
    `name`; returns its card. Raises PixelmillError when spandrel detects no architecture, or one that is not
    image in, image out in RGB."""
    check_name(name, "model name")
    if task not in IMPORT_TASKS:
        known = f"a known task ({', '.join(MODEL_TASKS)})" if task in MODEL_TASKS else "not a known task"
        raise ConfigError(f"cannot import a {task} model ({known}): spandrel's architectures are super-resolution "
                          "and restoration models, it detects no segmentation or colorization networks",
                          f"import with --task restoration, or train one: `pixelmill train {task}`")
    import torch

    from pixelmill.models.factory import build_model
    from pixelmill.models.spandrel_net import describe, spandrel_config

    data = storage.read_bytes(file)
    filename = storage.normalize_url(file).rstrip("/").rsplit("/", 1)[-1]
    desc = _detect(data, filename)
    net = build_model({"arch": "spandrel", **spandrel_config(desc)}, pretrained=False)
    net.net.load_state_dict(desc.model.state_dict(), strict=True)
    net.eval()
    x = torch.rand(1, 3, 19, 23, generator=torch.Generator().manual_seed(0))  # (1, 3, 19, 23): odd, small
    with torch.inference_mode():
        same = torch.allclose(net(x), desc(x), atol=1e-5)
    if not same:  # the config must rebuild what spandrel loaded, or the registry would hold another model
        raise PixelmillError(f"{filename}: the {desc.architecture.name} model rebuilt from its config does not "
                             "give spandrel's output", "report it with the file's architecture and spandrel version")
    config = {"task": task, "scale": desc.scale, "in_channels": desc.input_channels,
              "out_channels": desc.output_channels}
    metadata = {"source": f"{lineage.IMPORTED}{filename}", "source_sha256": hashlib.sha256(data).hexdigest(),
                "licence": licence, "imported": {"file": storage.normalize_url(file), **describe(desc)}}
    return registry.save(workspace, name, net, config, metadata)


def _detect(data: bytes, filename: str):
    """spandrel's descriptor of the checkpoint bytes, or a PixelmillError that says why not."""
    import spandrel

    from pixelmill.models.spandrel_net import PURPOSES

    ext = os.path.splitext(filename)[1].lower()
    if ext not in EXTENSIONS:
        raise ConfigError(f"{filename}: cannot import a {ext or 'extensionless'} file",
                          f"give a checkpoint ending in {', '.join(EXTENSIONS)}")
    with tempfile.TemporaryDirectory() as tmp:  # spandrel reads by path and picks the reader by extension
        path = os.path.join(tmp, f"checkpoint{ext}")
        with open(path, "wb") as f:
            f.write(data)
        try:
            desc = spandrel.ModelLoader().load_from_file(path)
        except spandrel.UnsupportedModelError:
            raise PixelmillError(f"{filename}: spandrel {spandrel.__version__} detects no architecture it knows",
                                 "it loads ESRGAN/Real-ESRGAN, SwinIR, HAT, DAT, SPAN and more "
                                 "(https://github.com/chaiNNer-org/spandrel#model-architecture-support)") from None
        except Exception as exc:  # torch, safetensors and the restricted unpickler each raise their own types
            raise PixelmillError(f"{filename}: cannot read it as a checkpoint ({type(exc).__name__}: {exc})",
                                 "is the file complete? only plain state dicts load (no pickled code)") from None
    what = f"{filename} is {desc.architecture.name}"
    if desc.purpose not in PURPOSES or not isinstance(desc, spandrel.ImageModelDescriptor):
        raise PixelmillError(f"{what}, a {desc.purpose} model: pixelmill runs image-to-image models "
                             f"({', '.join(PURPOSES)})", "face restoration and inpainting need inputs apply does "
                             "not make (aligned face crops, masks)")
    if (desc.input_channels, desc.output_channels) != (3, 3):
        raise PixelmillError(f"{what} with {desc.input_channels} -> {desc.output_channels} channels: pixelmill's "
                             "restoration runs RGB in, RGB out", "import an RGB model")
    return desc


# ---------------------------------------------------------------- out


def export_onnx(workspace: str, ref: str, target: str) -> dict:
    """Write the model as ONNX to `target` (dynamic batch, height and width) after checking that ONNX Runtime
    gives torch's output within ONNX_TOLERANCE at three odd sizes; returns what was written and checked."""
    missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"ONNX export needs {' and '.join(missing)}, not installed",
                          "pip install 'pixelmill[onnx]'")
    import onnx

    from pixelmill.models.onnx_export import OPSET, onnx_bytes

    card = registry.resolve(workspace, ref)
    model = registry.load_weights(card)
    graph = onnx.load_from_string(onnx_bytes(model, card.in_channels))
    config = registry.read_json(card, "config.json")
    for key, value in {"pixelmill_model": card.ref, "pixelmill_config": json.dumps(config, sort_keys=True),
                       "pixelmill_weights_sha256": card.weights_sha256 or ""}.items():
        graph.metadata_props.add(key=key, value=value)
    data = graph.SerializeToString()
    diffs = onnx_differences(model, data, card.in_channels)
    worst = max(diffs.values())
    if worst > ONNX_TOLERANCE:
        raise PixelmillError(f"{card.ref} ({card.arch}): the ONNX graph differs from torch by up to {worst:.3g} "
                             f"({', '.join(f'{k}: {v:.3g}' for k, v in diffs.items())}); nothing written",
                             "this architecture's shape logic does not trace to a graph with dynamic sizes")
    storage.write_bytes(target, data)
    return {"model": card.ref, "uri": storage.normalize_url(target), "bytes": len(data), "opset": OPSET,
            "max_abs_diff": diffs, "input": ["batch", card.in_channels, "height", "width"],
            "output": ["batch", card.out_channels, f"{card.scale}*height", f"{card.scale}*width"]}


def onnx_differences(model, data: bytes, in_channels: int, sizes=ONNX_CHECK_SIZES) -> dict[str, float]:
    """max |ONNX Runtime - torch| of the graph `data` and the torch model, per input size (random [0, 1])."""
    import numpy as np
    import onnxruntime as ort
    import torch

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # small inputs: one thread, no spinning workers competing with torch
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    out = {}
    for h, w in sizes:
        x = torch.rand(1, in_channels, h, w, generator=torch.Generator().manual_seed(h * 1000 + w))
        with torch.inference_mode():
            expected = model(x).float().numpy()
        got = session.run(None, {"image": x.numpy()})[0]
        out[f"{h}x{w}"] = float(np.abs(got - expected).max()) if got.shape == expected.shape else float("inf")
    return out


def export_folder(workspace: str, ref: str, folder: str) -> dict:
    """Write the Hugging Face layout to `folder`: the registry's weights.safetensors, config.json and
    metadata.json as they are (the folder is itself a model pixelmill loads: `pixelmill enhance FOLDER ...`),
    and README.md, a model card with the metrics, evaluations, training data and recipe from the lineage."""
    card = registry.resolve(workspace, ref)
    found = lineage.lineage_of_model(workspace, card.ref)
    folder = storage.normalize_url(folder)
    for file in FOLDER_FILES:
        storage.write_bytes(storage.join(folder, file), storage.read_bytes(storage.join(card.uri, file)))
    readme = model_card_markdown(card, found)
    storage.write_bytes(storage.join(folder, "README.md"), readme.encode())
    return {"model": card.ref, "uri": folder, "files": [*FOLDER_FILES, "README.md"]}


PIPELINE_TAGS = {"restoration": "image-to-image", "colorize": "image-to-image", "segmentation": "image-segmentation"}


def model_card_markdown(card: ModelCard, found: dict) -> str:
    """README.md of an exported model: Hugging Face front matter, then what it is, how it scores, what it was
    trained on and how (or where it was imported from), and how to run it."""
    model, training = found["model"], found["training"]
    licence = card.licence or ("unknown" if card.source_sha256 else None)
    inner = card.arch_kwargs.get("spandrel_arch") if card.arch == "spandrel" else None  # an imported network
    arch = f"{card.arch} ({inner})" if inner else card.arch
    front = ["---", "library_name: pixelmill", f"pipeline_tag: {PIPELINE_TAGS.get(card.task, 'image-to-image')}",
             f"license: {'other' if licence in (None, 'unknown') else licence}",
             "tags:", "- pixelmill", f"- {card.task}", f"- {card.arch}", *([f"- {inner}"] if inner else []),
             "---", ""]
    lines = [f"# {card.ref}", "",
             f"A pixelmill {card.task} model: {arch}, x{card.scale}, {card.in_channels} -> {card.out_channels} "
             "channels, inputs RGB in [0, 1] (any height and width).", "",
             "| field | value |", "|---|---|",
             f"| task | {card.task} |", f"| arch | `{arch}` |",
             f"| arch arguments | `{json.dumps(card.arch_kwargs, sort_keys=True)}` |",
             f"| scale | {card.scale} |", f"| channels | {card.in_channels} in, {card.out_channels} out |",
             f"| weights sha256 | `{card.weights_sha256 or '?'}` |", f"| code version | {card.code_version or '?'} |",
             f"| created | {_date(card.created_at)} |", f"| licence | {licence or 'not stated'} |"]
    if card.classes is not None:
        lines.append(f"| classes | {', '.join(card.classes.names)} |")
    if model.get("aliases"):
        lines.append(f"| aliases | {', '.join('@' + a for a in model['aliases'])} |")
    lines += ["", "## Metrics", ""]
    numbers = {k: v for k, v in card.metrics.items() if isinstance(v, int | float)}
    if numbers:
        lines += ["Last validation during training:", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4g} |" for k, v in numbers.items()]
    evaluations = model.get("evaluations") or []
    if evaluations:
        keys = [k for k in ("psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb", "miou", "global_acc", "mean_class_acc")
                if any(k in e for e in evaluations)]
        lines += [*([""] if numbers else []), "Evaluations (`pixelmill evaluate`):", "",
                  "| data | split | method | " + " | ".join(keys) + " | images | when |",
                  "|---|---|---|" + "---|" * len(keys) + "---|---|"]
        lines += [f"| {e.get('source', '?')} | {e.get('split', '?')} | {e.get('method', '?')} | "
                  + " | ".join(f"{e[k]:.4g}" if k in e else "" for k in keys)
                  + f" | {e.get('images', '?')} | {_date(e.get('created_at'))} |" for e in evaluations]
    if not numbers and not evaluations:
        lines.append("Not evaluated yet: `pixelmill evaluate MODEL --data pairs:NAME`.")
    lines += ["", "## Training data", ""] + _training_markdown(card, training)
    lines += ["", "## Recipe", ""] + _recipe_markdown(card, training)
    lines += ["", "## Use", "", "```sh",
              f"pixelmill {MODEL_TASKS[card.task].command} ./THIS_FOLDER input.png output.png",
              f"pixelmill models export {card.ref} --onnx model.onnx   # ONNX: input \"image\" (B, "
              f"{card.in_channels}, H, W) in [0, 1]", "```", ""]
    return "\n".join(front + lines)


def _training_markdown(card: ModelCard, training: dict | None) -> list[str]:
    if card.source_sha256 or (training and training.get("table") == "import"):
        return [f"Trained elsewhere and imported with `pixelmill models import` from "
                f"`{(card.source or '?').removeprefix(lineage.IMPORTED)}` "
                f"(sha256 `{card.source_sha256 or '?'}`); what it was trained on is what its authors say."]
    if training is None:
        return ["Unknown: the model does not say."]
    if not training["found"]:
        return [f"`{training['source']}`, no longer in the catalog."]
    splits = ", ".join(f"{n} {s}" for s, n in training["splits"].items())
    what = "pairs" if training["table"] == "pairs" else "images"
    lines = [f"`{training['source']}`: {training['count']} {what} ({splits}), {training['ok']} ok."]
    lines += [f"- data set `images:{d['name']}`: " + (f"{d['images']} images ({d['ok']} ok)" if d["found"]
                                                       else "no longer in the catalog") for d in training["datasets"]]
    return lines


def _recipe_markdown(card: ModelCard, training: dict | None) -> list[str]:
    if card.source_sha256:
        return ["Not trained by pixelmill."]
    lines = []
    if training and training.get("recipes"):
        matches = {True: " (the model's)", False: " (NOT the model's: the set was made again)", None: ""}
        lines.append(f"Degradation recipe: {', '.join(training['recipes'])}, hash "
                     f"{', '.join(f'`{h}`' for h in training['recipe_hashes'])}"
                     f"{matches[training['recipe_hash_matches']]}.")
    if card.steps is not None:
        lines.append(f"Trained {card.steps} steps.")
    if card.train_config:
        lines += ["", "Training configuration:", "", "```json", json.dumps(card.train_config, indent=1,
                                                                          sort_keys=True), "```"]
    return lines or ["Not recorded."]


def _date(value) -> str:
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    return str(value)[:19] if value else "?"
