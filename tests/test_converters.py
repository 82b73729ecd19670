"""Converters read the exact public layouts (tests/fixtures.py) and yield the exact samples."""

from __future__ import annotations

import io
import json
import logging
import shutil

import pytest
from fixtures import make_pmc_vqa, make_roco, make_slake, make_vqa_rad_mevf, make_vqa_rad_osf
from PIL import Image

from raymmr.data.making.converters import CONVERTERS, ConverterError, convert
from raymmr.data.schema import Sample

# key, split, text, answer, answer_type, question_type, organ, modality
VQA_RAD_MEVF = [
    ("vqa-rad-train-1", "train", "Is there a pneumothorax?", "yes", "closed", "pres", "chest", ""),
    ("vqa-rad-train-2", "train", "How many ribs are fractured?", "4", "open", "pres, attrib", "chest", ""),
    ("vqa-rad-train-3", "train", "Is the liver or spleen enlarged?", "liver", "closed", "atrib", "abdomen", ""),
    ("vqa-rad-test-11", "test", "Is there evidence of an aortic aneurysm?", "yes", "closed", "pres", "chest", ""),
    ("vqa-rad-test-12", "test", "How many lesions are seen?", "2", "open", "other", "head", ""),
]
VQA_RAD_OSF = [
    ("vqa-rad-train-0", "train", "Is the heart enlarged?", "yes", "closed", "size", "chest", ""),
    ("vqa-rad-train-1", "train", "Is there cardiomegaly?", "yes", "closed", "size", "chest", ""),
    ("vqa-rad-test-2", "test", "What organ is abnormal?", "kidney", "open", "organ", "abdomen", ""),
    ("vqa-rad-test-3", "test", "Which organ is abnormal?", "kidney", "open", "organ", "abdomen", ""),
    ("vqa-rad-test-4", "test", "How many cysts?", "3", "open", "count", "abdomen", ""),
]
SLAKE_EN = [
    (
        "slake-train-0",
        "train",
        "What modality is used to take this image?",
        "mri",
        "open",
        "modality",
        "abdomen",
        "mri",
    ),
    ("slake-train-2", "train", "Does the picture contain lung?", "yes", "closed", "organ", "lung", "x-ray"),
    ("slake-val-10", "val", "Where is the abnormality?", "left lung", "open", "position", "lung", "x-ray"),
    ("slake-test-20", "test", "How many kidneys are in this image?", "2", "open", "quantity", "abdomen", "ct"),
]
ROCO_RADIOLOGY = [
    ("roco-ROCO_00001", "train", "Axial computed tomography of the chest shows a nodule.", "", "", "", "", ""),
    ("roco-ROCO_00003", "val", "MRI of the brain with contrast.", "", "", "", "", ""),
    ("roco-ROCO_00004", "test", "Ultrasound of the left kidney.", "", "", "", "", ""),
]
PMC_VQA = [
    ("pmc-vqa-train-0", "train", "What does the arrow show?", "diffuse uptake pattern", "open", "", "", ""),
    ("pmc-vqa-train-1", "train", "Which imaging modality was used?", "mri", "open", "", "", ""),  # from Answer_label
    ("pmc-vqa-test-0", "test", "Is the lesion enhancing?", "yes", "open", "", "", ""),  # "B:Yes" prefix stripped
    ("pmc-vqa-test-1", "test", "How many lesions?", "2", "open", "", "", ""),
]


def summary(samples: list[Sample]) -> list[tuple]:
    return [(s.key, s.split, s.text, s.answer, s.answer_type, s.question_type, s.organ, s.modality) for s in samples]


def check_common(samples: list[Sample], source: str, kind: str) -> None:
    """Invariants every converter keeps: source/domain, kind, decodable bytes, JSON records."""
    assert samples and len({s.key for s in samples}) == len(samples)
    for s in samples:
        assert (s.source, s.domain, s.kind) == (source, source, kind)
        assert s.split in ("train", "val", "test") and "." not in s.key
        assert Image.open(io.BytesIO(s.image)).size == (8, 8)
        json.dumps(s.record())


# ------------------------------------------------------------------------------------ VQA-RAD
def test_vqa_rad_mevf_exact_samples_and_quirks(tmp_path, caplog):
    root = make_vqa_rad_mevf(tmp_path)
    with caplog.at_level(logging.WARNING, logger="raymmr.data.making.converters"):
        samples = list(CONVERTERS["vqa-rad"](root))
    assert summary(samples) == VQA_RAD_MEVF  # valset.json (a copy of test) is not read
    check_common(samples, "vqa-rad", "vqa")
    assert samples[2].extra == {"qid": 3, "image_name": "synpic200.jpg", "phrase_type": "para"}
    assert "skipped 1 rows with a missing image" in caplog.text and "synpic999.jpg" in caplog.text
    # The parent folder works too (data_RAD/ is found inside it).
    assert summary(convert("vqa-rad", tmp_path)) == VQA_RAD_MEVF


@pytest.mark.parametrize("xlsx_keys", [False, True])
def test_vqa_rad_osf_splits_by_phrase_type(tmp_path, xlsx_keys):
    samples = list(convert("vqa-rad", make_vqa_rad_osf(tmp_path, xlsx_keys=xlsx_keys)))
    assert summary(samples) == VQA_RAD_OSF
    assert [s.extra["phrase_type"] for s in samples][2:] == ["test_freeform", "test_para", "test_paraphrase"]
    check_common(samples, "vqa-rad", "vqa")


def test_vqa_rad_missing_field_names_file_row_and_field(tmp_path):
    root = make_vqa_rad_mevf(tmp_path)
    rows = json.loads((root / "testset.json").read_text())
    del rows[1]["answer"]
    (root / "testset.json").write_text(json.dumps(rows))
    with pytest.raises(ConverterError) as err:
        convert("vqa-rad", root)
    msg = str(err.value)
    assert "testset.json" in msg and "row 1" in msg and "'answer'" in msg and "qid 12" in msg and "Fix" in msg


def test_vqa_rad_bad_answer_type_names_the_row(tmp_path):
    root = make_vqa_rad_mevf(tmp_path)
    rows = json.loads((root / "trainset.json").read_text())
    rows[0]["answer_type"] = "MAYBE"
    (root / "trainset.json").write_text(json.dumps(rows))
    with pytest.raises(ConverterError, match=r"trainset\.json: row 0 has answer_type 'MAYBE'"):
        list(convert("vqa-rad", root))


def test_vqa_rad_no_images_names_the_images_folder(tmp_path):
    root = make_vqa_rad_mevf(tmp_path)
    shutil.rmtree(root / "images")
    with pytest.raises(ConverterError) as err:
        list(convert("vqa-rad", root))
    assert str(root / "images") in str(err.value) and "none of the images" in str(err.value)


def test_vqa_rad_half_a_mevf_folder_is_an_error(tmp_path):
    root = make_vqa_rad_mevf(tmp_path)
    (root / "testset.json").unlink()
    with pytest.raises(ConverterError, match="missing testset.json"):
        convert("vqa-rad", root)


# -------------------------------------------------------------------------------------- SLAKE
def test_slake_english_only_by_default(tmp_path, caplog):
    root = make_slake(tmp_path)
    with caplog.at_level(logging.INFO, logger="raymmr.data.making.converters"):
        samples = list(convert("slake", root))
    assert summary(samples) == SLAKE_EN  # zh rows 1 and 11 left out; qid 21 has no image
    check_common(samples, "slake", "vqa")
    assert samples[0].extra["triple"] == ["vhead", "_", "_"] and samples[0].extra["img_id"] == 1
    assert "left out 2 rows" in caplog.text and "xmlab9/source.jpg" in caplog.text
    assert summary(convert("slake", tmp_path)) == SLAKE_EN  # parent of Slake1.0/ works too


def test_slake_both_languages(tmp_path):
    samples = list(convert("slake", make_slake(tmp_path), languages=["en", "zh"]))
    assert [s.key for s in samples] == [
        "slake-train-0",
        "slake-train-1",
        "slake-train-2",
        "slake-val-10",
        "slake-val-11",
        "slake-test-20",
    ]
    assert samples[1].answer == "核磁共振" and samples[1].extra["q_lang"] == "zh"


def test_slake_missing_q_lang(tmp_path):
    root = make_slake(tmp_path)
    rows = json.loads((root / "validate.json").read_text())
    del rows[0]["q_lang"]
    (root / "validate.json").write_text(json.dumps(rows))
    with pytest.raises(ConverterError, match=r"validate\.json: row 0 \(qid 10\) has no field 'q_lang'"):
        convert("slake", root)


# --------------------------------------------------------------------------------------- ROCO
@pytest.mark.parametrize("val_dir", ["val", "validation"])
def test_roco_radiology_captions(tmp_path, val_dir, caplog):
    root = make_roco(tmp_path, val_dir=val_dir)
    with caplog.at_level(logging.WARNING, logger="raymmr.data.making.converters"):
        samples = list(convert("roco", root))
    assert summary(samples) == ROCO_RADIOLOGY  # leading space stripped, ROCO_00002 has no image
    check_common(samples, "roco", "caption")
    assert samples[0].extra == {"roco_id": "ROCO_00001", "subset": "radiology"}
    assert "ROCO_00002.jpg" in caplog.text
    assert summary(convert("roco", root / "data")) == ROCO_RADIOLOGY


def test_roco_non_radiology_is_opt_in(tmp_path):
    root = make_roco(tmp_path)
    samples = list(convert("roco", root, subsets=["radiology", "non-radiology"], splits=["train"]))
    assert [(s.key, s.extra["subset"]) for s in samples] == [
        ("roco-ROCO_00001", "radiology"),
        ("roco-ROCO_10001", "non-radiology"),
    ]


def test_roco_val_and_validation_both_present_is_an_error(tmp_path):
    root = make_roco(tmp_path, val_dir="val")
    shutil.copytree(root / "data" / "val", root / "data" / "validation")
    with pytest.raises(ConverterError, match="read twice"):
        convert("roco", root)


def test_roco_line_without_tab(tmp_path):
    root = make_roco(tmp_path)
    captions = root / "data" / "test" / "radiology" / "captions.txt"
    captions.write_text("ROCO_00004 no tab here\n")
    with pytest.raises(ConverterError) as err:
        convert("roco", root)
    assert str(captions) in str(err.value) and "line 1" in str(err.value) and "ROCO_ID<TAB>caption" in str(err.value)


# ------------------------------------------------------------------------------------ PMC-VQA
def test_pmc_vqa_answer_column(tmp_path):
    samples = list(convert("pmc-vqa", make_pmc_vqa(tmp_path)))
    assert summary(samples) == PMC_VQA
    check_common(samples, "pmc-vqa", "vqa")
    assert samples[1].extra["choices"] == ["CT", "MRI", "PET", "X-ray"] and samples[1].extra["answer_label"] == "B"


def test_pmc_vqa_anwser_spelling_caption_and_zip(tmp_path):
    root = make_pmc_vqa(tmp_path, answer_column="Anwser", caption=True, zipped=True)
    samples = list(convert("pmc-vqa", root))
    assert summary(samples) == PMC_VQA
    assert samples[0].extra["caption"] == "Figure caption of PMC1_F1.jpg"


def test_pmc_vqa_clean_test_split(tmp_path):
    root = make_pmc_vqa(tmp_path, clean=True)
    assert [(s.key, s.split) for s in convert("pmc-vqa", root) if s.split == "test"] == [
        ("pmc-vqa-test_clean-0", "test")
    ]
    full = [s.key for s in convert("pmc-vqa", root, clean_test=False) if s.split == "test"]
    assert full == ["pmc-vqa-test-0", "pmc-vqa-test-1"]


def test_pmc_vqa_missing_column(tmp_path):
    root = make_pmc_vqa(tmp_path)
    text = (root / "test.csv").read_text().replace("Question,", "Query,", 1)
    (root / "test.csv").write_text(text)
    with pytest.raises(ConverterError) as err:
        convert("pmc-vqa", root)
    assert "test.csv" in str(err.value) and "'Question'" in str(err.value) and "Fix" in str(err.value)


def test_pmc_vqa_no_images(tmp_path):
    root = make_pmc_vqa(tmp_path)
    shutil.rmtree(root / "images")
    with pytest.raises(ConverterError, match="none of the images"):
        list(convert("pmc-vqa", root))


# ------------------------------------------------------------------------------------ all
@pytest.mark.parametrize("name", sorted(CONVERTERS))
def test_wrong_folder_names_the_folder_and_the_fix(tmp_path, name):
    (tmp_path / "notes.txt").write_text("not a dataset")
    with pytest.raises(ConverterError) as err:
        convert(name, tmp_path)
    assert str(tmp_path) in str(err.value) and "Fix" in str(err.value)
    assert isinstance(err.value, ValueError)


def test_unknown_dataset_name():
    with pytest.raises(ValueError, match="roco, pmc-vqa, vqa-rad, slake"):
        convert("mimic", ".")
