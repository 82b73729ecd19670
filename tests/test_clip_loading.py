"""Loading CLIP towers from local checkpoints, and the export / Predictor round trip."""

import json
import shutil

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from raymmr.config import ConfigError, load_config
from raymmr.model.encoders import ImageEncoder, TextEncoder
from raymmr.model.export import save_export
from raymmr.model.model import RaymmrModel, load_export
from raymmr.serve import Predictor
from raymmr.train.momentum import MomentumEMA

torch.set_num_threads(1)
VOCAB = 120


def tiny(*overrides):
    return load_config("tiny", list(overrides))


def tiny_timm_clip(cfg, num_classes=0, seed=0):
    torch.manual_seed(seed)
    m = cfg.model
    return timm.create_model(
        "vit_base_patch16_clip_224", pretrained=False, img_size=m.image_size, patch_size=m.patch_size,
        embed_dim=m.image_width, depth=m.image_layers, num_heads=m.image_heads, num_classes=num_classes,
    ).eval()  # fmt: skip


def tiny_hf_clip_text(cfg, positions=None, seed=0):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    m = cfg.model
    config = CLIPTextConfig(
        vocab_size=VOCAB, hidden_size=m.text_width, intermediate_size=4 * m.text_width, num_hidden_layers=m.text_layers,
        num_attention_heads=m.text_heads, max_position_embeddings=positions or m.max_text_len, pad_token_id=0,
        bos_token_id=None, eos_token_id=0,
    )  # fmt: skip
    return CLIPTextModel(config).eval()


def pixels(cfg, b=2):
    return torch.randn(b, 3, cfg.model.image_size, cfg.model.image_size, generator=torch.Generator().manual_seed(1))


def to_openai_clip(state: dict) -> dict:
    """timm ViT names -> OpenAI CLIP's ``visual.*`` names (the inverse of timm's converter)."""
    out = {"logit_scale": torch.tensor(4.6), "token_embedding.weight": torch.zeros(3, 4)}  # non-visual keys
    for k, v in state.items():
        if k == "cls_token":
            out["visual.class_embedding"] = v[0, 0]
            continue
        if k == "pos_embed":
            out["visual.positional_embedding"] = v[0]
            continue
        if k == "head.weight":
            out["visual.proj"] = v.t()
            continue
        if k == "head.bias":
            continue
        for a, b in [("patch_embed.proj", "conv1"), ("norm_pre", "ln_pre"), ("blocks.", "transformer.resblocks."),
                     ("norm1", "ln_1"), ("norm2", "ln_2"), ("attn.qkv.", "attn.in_proj_"), ("attn.proj", "attn.out_proj"),
                     ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")]:  # fmt: skip
            k = k.replace(a, b)
        if k.startswith("norm."):
            k = k.replace("norm.", "ln_post.")
        out[f"visual.{k}"] = v
    return out


@torch.no_grad()
def test_image_tower_loads_a_timm_safetensors_dir(tmp_path):
    cfg = tiny()
    ref = tiny_timm_clip(cfg)
    save_file(ref.state_dict(), str(tmp_path / "model.safetensors"))
    enc = ImageEncoder(tiny(f"model.image_pretrained={tmp_path}").model).eval()
    x = pixels(cfg)
    assert torch.equal(enc.vit.forward_features(x), ref.forward_features(x))
    h, local = enc(x)
    assert torch.allclose(h, ref.forward_head(ref.forward_features(x), pre_logits=True), atol=1e-6)
    assert local.shape == (2, enc.num_patches, cfg.model.recnet_width)


@torch.no_grad()
def test_image_tower_loads_a_checkpoint_file_with_a_head(tmp_path):
    cfg = tiny()
    ref = tiny_timm_clip(cfg, num_classes=32)  # CLIP's projection lives in timm's head: dropped on load
    torch.save({"state_dict": ref.state_dict()}, tmp_path / "clip.pth")
    enc = ImageEncoder(tiny(f"model.image_pretrained={tmp_path / 'clip.pth'}").model).eval()
    x = pixels(cfg)
    assert torch.equal(enc.vit.forward_features(x), ref.forward_features(x))


@torch.no_grad()
def test_image_tower_loads_openai_clip_format(tmp_path):
    cfg = tiny()
    ref = tiny_timm_clip(cfg, num_classes=16)
    torch.save(to_openai_clip(ref.state_dict()), tmp_path / "openai.bin")
    enc = ImageEncoder(tiny(f"model.image_pretrained={tmp_path / 'openai.bin'}").model).eval()
    x = pixels(cfg)
    assert torch.allclose(enc.vit.forward_features(x), ref.forward_features(x), atol=1e-6)


def test_image_tower_rejects_a_checkpoint_of_another_size(tmp_path):
    other = tiny_timm_clip(tiny("model.image_width=64", "model.image_heads=4"))
    save_file(other.state_dict(), str(tmp_path / "model.safetensors"))
    with pytest.raises(ConfigError, match="image_pretrained"):
        ImageEncoder(tiny(f"model.image_pretrained={tmp_path}").model)
    with pytest.raises(FileNotFoundError):
        ImageEncoder(tiny(f"model.image_pretrained={tmp_path / 'nothing'}").model)


@torch.no_grad()
def test_text_tower_loads_a_transformers_clip_dir(tmp_path):
    cfg = tiny()
    ref = tiny_hf_clip_text(cfg)
    ref.save_pretrained(tmp_path / "clip_text")
    enc = TextEncoder(tiny(f"model.text_pretrained={tmp_path / 'clip_text'}").model, VOCAB, 0).eval()
    ids = torch.randint(5, VOCAB, (2, cfg.model.max_text_len))
    mask = torch.ones_like(ids)
    mask[1, 10:] = 0
    want = ref(input_ids=ids, attention_mask=mask).last_hidden_state
    got = enc.model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.allclose(got, want, atol=1e-6)
    h, local = enc(ids, mask)
    assert torch.allclose(h[1], want[1, 9], atol=1e-6)  # pooled at the last real token
    # a tokenizer with another vocabulary resizes the token embeddings
    bigger = TextEncoder(tiny(f"model.text_pretrained={tmp_path / 'clip_text'}").model, VOCAB + 7, 0)
    assert bigger.model.get_input_embeddings().num_embeddings == VOCAB + 7
    with pytest.raises(ConfigError, match="text_width"):
        TextEncoder(tiny(f"model.text_pretrained={tmp_path / 'clip_text'}", "model.text_width=64").model, VOCAB, 0)


# --------------------------------------------------------------------------- export / Predictor


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    from raymmr.data.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("tok")
    texts = ["is there a lesion in the left lung", "ct of the chest shows a mass", "mri of the head is normal",
             "how many nodules are there", "which organ is shown"] * 4  # fmt: skip
    train_tokenizer(texts, out, vocab_size=200, add_perturbed=False)
    return out


def make_model(cfg, tokenizer_dir, answers):
    from raymmr.data.tokenizer import load_tokenizer

    tok = load_tokenizer(str(tokenizer_dir))
    torch.manual_seed(0)
    model = RaymmrModel(cfg.model, vocab_size=len(tok), num_answers=len(answers), pad_token_id=tok.pad_token_id,
                        mask_token_id=tok.mask_token_id)  # fmt: skip
    with torch.no_grad():  # make the momentum copies differ from the online encoders
        for p in model.image_encoder.parameters():
            p.add_(0.01)
    MomentumEMA(model, zero3=False).update()
    return model.eval()


def images(n, size, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size + 5, size - 3, 3), dtype=np.uint8)) for _ in range(n)]


def test_export_and_predictor_round_trip(tmp_path, tokenizer_dir):
    cfg = tiny()
    answers = ["yes", "no", "left", "right", "chest"]
    model = make_model(cfg, tokenizer_dir, answers)
    save_export(model, cfg, tmp_path / "export", tokenizer=tokenizer_dir, answers=answers)
    assert {p.name for p in (tmp_path / "export").iterdir()} >= {"model.safetensors", "config.yaml", "tokenizer.json", "answers.json"}
    assert json.loads((tmp_path / "export" / "answers.json").read_text()) == answers

    loaded, loaded_cfg, meta = load_export(tmp_path / "export")
    assert loaded_cfg == cfg and meta["answers"] == answers
    live_state, new_state = model.state_dict(), loaded.state_dict()
    assert live_state.keys() == new_state.keys()
    assert all(torch.equal(live_state[k], new_state[k]) for k in live_state)  # momentum copies included

    predictor = Predictor.from_export(tmp_path / "export", device="cpu")
    pics = images(3, cfg.data.image_size)
    questions = ["is there a lesion in the left lung", "which organ is shown", "how many nodules"]
    got = predictor.answer(pics, questions)
    with torch.no_grad():
        ids, mask = predictor.text_tensors(questions)
        prob, idx = model.answer_logits(predictor.image_tensor(pics), ids, mask).softmax(-1).max(-1)
    assert [a for a, _ in got] == [answers[i] for i in idx.tolist()]
    assert np.allclose([p for _, p in got], prob.tolist(), atol=1e-6)
    with torch.no_grad():
        assert torch.allclose(predictor.embed_images(pics), model.encode_image(predictor.image_tensor(pics)), atol=1e-6)
        assert torch.allclose(predictor.embed_texts(questions), model.encode_text(ids, mask), atol=1e-6)


def test_export_of_clip_initialised_towers_loads_without_their_sources(tmp_path, tokenizer_dir):
    """The export rebuilds the towers from its own metadata: the CLIP files may be gone, and a
    pretrained text tower with more positions than max_text_len still fits its weights."""
    cfg = tiny()
    save_file(tiny_timm_clip(cfg).state_dict(), str(tmp_path / "model.safetensors"))
    from raymmr.data.tokenizer import load_tokenizer

    text = tiny_hf_clip_text(cfg, positions=40)
    text.resize_token_embeddings(len(load_tokenizer(str(tokenizer_dir))))
    text.save_pretrained(tmp_path / "clip_text")
    cfg = tiny(f"model.image_pretrained={tmp_path}", f"model.text_pretrained={tmp_path / 'clip_text'}")
    answers = ["yes", "no"]
    model = make_model(cfg, tokenizer_dir, answers)
    save_export(model, cfg, tmp_path / "export", tokenizer=tokenizer_dir, answers=answers)
    shutil.rmtree(tmp_path / "clip_text")
    (tmp_path / "model.safetensors").unlink()
    loaded, _, _ = load_export(tmp_path / "export")
    pics = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    ids = torch.randint(5, 50, (2, cfg.model.max_text_len))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        assert torch.allclose(loaded.answer_logits(pics, ids, mask), model.answer_logits(pics, ids, mask), atol=1e-6)


def test_clip_text_tower_comes_with_its_own_tokenizer_and_a_mask_token(tmp_path):
    """model.text_pretrained (a CLIP dir holding its BPE tokenizer, which has no mask token): the
    run tokenises with that tokenizer, a mask token is added as the next id, the tower grows one
    row for it and keeps every trained row under the ids they were trained for; the export
    reloads the same tokenizer (mask included) for evaluation and the Predictor."""
    from transformers import CLIPTokenizer

    from raymmr.data.tokenizer import ADDED_MASK, encode_texts, load_tokenizer, tokenizer_source

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz.?":
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    clip_dir = tmp_path / "clip_text"
    cfg0 = tiny()
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    m = cfg0.model
    ref = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=m.text_width, intermediate_size=4 * m.text_width,
        num_hidden_layers=m.text_layers, num_attention_heads=m.text_heads, max_position_embeddings=m.max_text_len,
        pad_token_id=1, bos_token_id=0, eos_token_id=1)).eval()  # fmt: skip
    ref.save_pretrained(clip_dir)
    CLIPTokenizer(vocab=vocab, merges=[]).save_pretrained(clip_dir)

    cfg = tiny(f"model.text_pretrained={clip_dir}")
    assert tokenizer_source(cfg, "/no/shards") == str(clip_dir)  # not the shards' own tokenizer
    assert tokenizer_source(tiny("data.tokenizer=/x"), "/no/shards") == "/x"
    tok = load_tokenizer(tokenizer_source(cfg, "/no/shards"))
    assert tok.mask_token == ADDED_MASK and tok.mask_token_id == len(vocab) and len(tok) == len(vocab) + 1
    ids, mask = encode_texts(tok, ["a cat."], cfg.model.max_text_len)
    assert ids[0, 0].item() == 0 and ids[0, int(mask[0].sum()) - 1].item() == 1  # <|startoftext|> ... <|endoftext|>
    model = RaymmrModel(cfg.model, vocab_size=len(tok), num_answers=3, pad_token_id=tok.pad_token_id,
                        mask_token_id=tok.mask_token_id)  # fmt: skip
    table = model.text_encoder.model.get_input_embeddings().weight
    assert table.shape[0] == len(vocab) + 1
    assert torch.equal(table[: len(vocab)], ref.get_input_embeddings().weight)  # trained rows, same ids
    # what an export takes: the tokenizer the run loaded (not loaded again), else a fresh load; a bare
    # tokenizer.json as its file
    from raymmr.data import tokenizer as tokenizers

    assert tokenizers.exportable_tokenizer(cfg, "/no/shards", tok) is tok
    assert tokenizers.exportable_tokenizer(cfg, "/no/shards").mask_token_id == tok.mask_token_id
    (tmp_path / "bare").mkdir()
    tok.backend_tokenizer.save(str(tmp_path / "bare" / "tokenizer.json"))
    assert tokenizers.exportable_tokenizer(tiny(f"data.tokenizer={tmp_path / 'bare'}"), "/no/shards", tok) == str(
        tmp_path / "bare" / "tokenizer.json")
    out = save_export(model, cfg, tmp_path / "export", tokenizer=tok, answers=["yes", "no", "left"])
    with pytest.raises(ValueError, match="Hugging Face tokenizer's folder"):  # its config would be lost
        save_export(model, cfg, tmp_path / "export2", tokenizer=str(clip_dir), answers=["yes", "no", "left"])
    again = load_tokenizer(str(out))
    assert again.mask_token_id == tok.mask_token_id and len(again) == len(tok)
    predictor = Predictor.from_export(out, device="cpu")
    assert predictor.tokenizer.mask_token_id == tok.mask_token_id
    assert predictor.answer(images(1, cfg.model.image_size), ["a cat?"])[0][0] in ("yes", "no", "left")


@torch.no_grad()
def test_pretrained_towers_and_tokenizer_load_from_a_bucket(tmp_path):
    """model.image_pretrained, model.text_pretrained and data.tokenizer may be storage URLs (a
    cluster's nodes share no disk): each is copied into the node's cache and loads as the local
    copy does."""
    import uuid

    from raymmr import storage
    from raymmr.data.tokenizer import load_tokenizer

    bucket = f"memory://raymmr-test-{uuid.uuid4().hex[:8]}"
    cfg = tiny()
    ref = tiny_timm_clip(cfg)
    save_file(ref.state_dict(), str(tmp_path / "model.safetensors"))
    storage.put(tmp_path / "model.safetensors", f"{bucket}/vit/model.safetensors")
    text = tiny_hf_clip_text(cfg)
    text.save_pretrained(tmp_path / "clip_text")
    storage.put(tmp_path / "clip_text", f"{bucket}/clip_text")
    enc = ImageEncoder(tiny(f"model.image_pretrained={bucket}/vit").model).eval()
    x = pixels(cfg)
    assert torch.equal(enc.vit.forward_features(x), ref.forward_features(x))
    tower = TextEncoder(tiny(f"model.text_pretrained={bucket}/clip_text").model, VOCAB, 0).eval()
    ids = torch.randint(5, VOCAB, (2, cfg.model.max_text_len))
    assert torch.allclose(tower.model(input_ids=ids).last_hidden_state, text(input_ids=ids).last_hidden_state, atol=1e-6)
    from tokenizers import Tokenizer, models

    Tokenizer(models.WordLevel({"[PAD]": 0, "[UNK]": 1, "lesion": 2}, unk_token="[UNK]")).save(str(tmp_path / "t.json"))
    storage.put(tmp_path / "t.json", f"{bucket}/tok/tokenizer.json")
    assert load_tokenizer(f"{bucket}/tok/tokenizer.json").convert_tokens_to_ids("lesion") == 2
