"""The model card (``README.md``) of an exported model: Hugging Face Hub front matter (library,
tags, datasets, metrics) and what a reader needs: task, classes, training, evaluation, usage."""

from __future__ import annotations

import yaml

from clefctl.weights.archs import clef_architectures

CLEF_CITATION = """@inproceedings{zhang2023clef,
  title     = {Weakly-Supervised Text-Driven Contrastive Learning for Facial Behavior Understanding},
  author    = {Zhang, Xiang and Wang, Taoyue and Li, Xiaotian and Yang, Huiyuan and Yin, Lijun},
  booktitle = {Proceedings of the IEEE/CVF International Conference on Computer Vision (ICCV)},
  pages     = {20751--20762},
  year      = {2023}
}"""

TASK_TAGS = {"au": "facial-action-units", "fer": "facial-expression-recognition"}


def _front_matter(doc: dict) -> str:
    task = doc.get("task")
    tags = ["clef", "clefctl", "clip", "open_clip", "face"] + ([TASK_TAGS[task]] if task in TASK_TAGS else [])
    fm = {"library_name": "open_clip", "pipeline_tag": "zero-shot-image-classification", "tags": tags}
    if doc.get("dataset"):
        fm["datasets"] = [doc["dataset"]]
    fm["metrics"] = ["f1"] if task == "au" else ["accuracy", "f1"] if task == "fer" else []
    if not fm["metrics"]:
        del fm["metrics"]
    return "---\n" + yaml.safe_dump(fm, sort_keys=False) + "---\n"


def _fmt(v) -> str:
    return f"{v:.1f}" if isinstance(v, float) else "-" if v is None else str(v)


def _decision(th: dict | None) -> str:
    if not th:
        return "-"
    values = set((th.get("per_class") or {}).values())
    if len(values) == 1:
        return f"an AU occurs when its probability > {values.pop()}"
    return th.get("rule", "-") + (" (per class: see clefctl.json)" if values else "")


def _evaluation_section(doc: dict, evaluation: dict | None) -> list[str]:
    lines = ["## Evaluation", ""]
    if evaluation:
        lines += [f"From `clefctl evaluate` (report `{evaluation['run']}`), protocol: "
                  f"{evaluation.get('protocol') or 'not recorded'}, data set: {evaluation.get('dataset') or '-'}."]
        if evaluation.get("folds"):
            lines += ["", f"The k-fold numbers average {evaluation['folds']} models trained with this model's "
                          "settings, each tested on subjects it never saw; this model is one of them."]
        if evaluation.get("table"):
            lines += ["", "```", evaluation["table"].rstrip("\n"), "```"]
    else:
        lines += ["No `clefctl evaluate` report was found for this model's run."]
    test = doc.get("test_metrics") or {}
    shown = {k: test[k] for k in ("mean_f1", "accuracy", "macro_f1", "n_samples") if k in test}
    if shown:
        protocol = test.get("protocol") or doc.get("protocol") or "-"
        lines += ["", f"Held-out check at the end of fine-tuning, {protocol}: "
                      + ", ".join(f"{k} {_fmt(v)}" for k, v in shown.items()) + "."]
    return lines + [""]


def model_card(doc: dict, evaluation: dict | None) -> str:
    """The README.md text for ``clefctl.json`` content ``doc`` and the evaluation found (or None)."""
    task = doc.get("task")
    what = {"au": "facial action unit (AU) occurrence", "fer": "facial expression"}.get(task, "face representation")
    classes = doc.get("classes") or []
    lines = [_front_matter(doc), f"# CLEF {what} model ({doc.get('arch')})", "",
             f"A CLIP model fine-tuned with CLEF (Zhang et al., ICCV 2023) by clefctl {doc.get('clefctl_version')}: "
             f"images are scored against text embeddings of the class names, stored in `clefctl.json`.", ""]
    lines += ["## Model", "",
              f"- architecture: `{doc.get('arch')}`{' (QuickGELU)' if doc.get('quick_gelu') else ''}",
              f"- stage: {doc.get('stage')}; task: {task or '-'}; head: {doc.get('head') or '-'}",
              f"- classes ({len(classes)}): {', '.join(map(str, classes)) or '-'}",
              f"- decision: {_decision(doc.get('thresholds'))}",
              f"- prompt set: `{doc.get('prompts') or '-'}` (hash `{doc.get('prompts_hash') or '-'}`)",
              f"- initialised from: {doc.get('init') or '-'} (fingerprint `{doc.get('init_fingerprint') or '-'}`)",
              f"- training data: {doc.get('dataset') or '-'}; protocol: {doc.get('protocol') or '-'}", ""]
    if doc.get("arch") in clef_architectures():
        lines += [f"`{doc.get('arch')}` is one of clefctl's small from-scratch configurations with a convolutional "
                  "stem: load it with clefctl (plain open_clip cannot build that stem).", ""]
    lines += _evaluation_section(doc, evaluation)
    flag = {"au": "--au-checkpoint", "fer": "--fer-checkpoint"}.get(task)
    lines += ["## Use", "", "```bash", "pip install clefctl"]
    if flag:
        lines += [f"clefctl predict photos/ {flag} hf-hub:ORG/NAME --out predictions.csv"]
    lines += ["clefctl embed --dataset rafdb --weights hf-hub:ORG/NAME",
              "clefctl finetune --dataset bp4d --weights hf-hub:ORG/NAME   # start from this model", "```", "",
              "Replace ORG/NAME with this repository's name; a downloaded copy of this folder works as "
              "`--weights ./folder` too.", "",
              "## Files", "",
              "- `open_clip_model.safetensors`, `open_clip_config.json`: the CLIP model in open_clip's Hub layout",
              "- `clefctl.json`: task, classes, class-name embeddings, thresholds, training provenance",
              "- `prompts.yaml`: the prompt set it was trained with", "",
              "## Citation", "", "```bibtex", CLEF_CITATION, "```", ""]
    return "\n".join(lines)
