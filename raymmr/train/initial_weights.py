"""Fine-tuning's starting point: the weights of a pre-training export, with the answer head's rows
matched to this run's answers by name."""

from __future__ import annotations

import json

import torch

from raymmr.train.metrics import console


def load_initial_weights(model, init_from: str, rank: int, answers: list[str]) -> dict:
    """Initialise fine-tuning from a pre-training export (a path or URL the driver resolved with
    ``storage.find_export``; each node copies a remote one into its own cache). The answer head's
    rows follow the answers, not their positions: a row is carried over for every answer of this
    run's vocabulary that the export's ``answers.json`` has, and the other rows keep their fresh
    initialisation. Returns what was carried (logged by rank 0 and recorded in events.jsonl)."""
    from safetensors.torch import load_file

    from raymmr import storage

    export = storage.cached_copy(init_from, "exports")
    weights = export / storage.WEIGHTS
    if not weights.exists():
        raise FileNotFoundError(f"--init {init_from}: no {storage.WEIGHTS} there")
    state = load_file(str(weights))
    own = model.state_dict()
    head = f"recnet.head_answer.{len(model.recnet.head_answer) - 1}"
    vocab = export / "answers.json"
    old_answers = json.loads(vocab.read_text()) if vocab.exists() else None
    report = {"event": "init", "export": init_from, "answers": len(answers)}
    if old_answers is not None and f"{head}.weight" in state:
        rows = {a: i for i, a in enumerate(old_answers)}
        carried = [(i, rows[a]) for i, a in enumerate(answers) if a in rows]
        for name in (f"{head}.weight", f"{head}.bias"):
            new = own[name].clone()
            if carried:
                new[torch.tensor([i for i, _ in carried])] = state[name][torch.tensor([j for _, j in carried])]
            state[name] = new
        report.update(answers_carried=len(carried), answers_new=[a for a in answers if a not in rows][:20],
                      answers_dropped=len(old_answers) - len(carried))
    mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    for k in mismatched:
        state.pop(k)
    missing, unexpected = model.load_state_dict(state, strict=False)
    report.update(reinitialised=mismatched, missing=missing, unexpected=unexpected)
    if rank == 0:
        head_note = (f"answer head: {report['answers_carried']} of {len(answers)} answers carried over"
                     + (f", new: {report['answers_new']}" if report["answers_new"] else "")
                     if "answers_carried" in report else "answer head: the export has no answers.json")
        console(f"[init] from {init_from}: {head_note}"
                + (f"; re-initialised {mismatched}" if mismatched else "")
                + (f"; missing {missing}" if missing else "") + (f"; unexpected {unexpected}" if unexpected else ""))
    return report
