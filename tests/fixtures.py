"""Tiny copies of the public dataset layouts (docs/DATA_FORMATS.md), quirks included.

Each ``make_*`` writes a dataset under ``root`` exactly as it is distributed and returns the
folder a user would pass to the converter. The rows are few but carry every documented quirk,
so tests can assert the exact samples a converter yields.
"""

from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path

from PIL import Image


def image_bytes(shade: int, fmt: str = "JPEG") -> bytes:
    """An 8x8 grey image; the shade makes each file's bytes distinct."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (shade, shade, shade)).save(buf, format=fmt)
    return buf.getvalue()


def _write_image(path: Path, shade: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(image_bytes(shade, "PNG" if path.suffix == ".png" else "JPEG"))


def _write_json(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=1))


# ------------------------------------------------------------------------------ VQA-RAD (MEVF)
def _mevf_row(qid, image, organ, answer, atype, qtype, question, phrase):
    return {
        "qid": qid,
        "image_name": image,
        "image_organ": organ,
        "answer": answer,
        "answer_type": atype,
        "question_type": qtype,
        "question": question,
        "phrase_type": phrase,
    }


VQA_RAD_TRAIN = [
    _mevf_row(1, "synpic100.jpg", "CHEST", "Yes", "CLOSED", "PRES", "Is there a pneumothorax?", "freeform"),
    _mevf_row(2, "synpic100.jpg", "CHEST", 4, "OPEN", "PRES, ATTRIB", "How many  ribs are fractured?", "frame"),
    _mevf_row(3, "synpic200.jpg", "ABD", "the Liver", "CLOSED ", "ATRIB", "Is the liver or spleen enlarged?", "para"),
    _mevf_row(4, "synpic999.jpg", "HEAD", "no", "CLOSED", "PRSE", "Is there a bleed?", "freeform"),  # image missing
]
VQA_RAD_TEST = [
    _mevf_row(
        11, "synpic300.jpg", "CHEST", "yes", "CLOSED", "PRES", "Is there evidence of an aortic aneurysm?", "freeform"
    ),
    _mevf_row(12, "synpic300.jpg", "HEAD", "Two", "OPEN", "Other", "How many lesions are seen?", "para"),
]


def make_vqa_rad_mevf(root: Path) -> Path:
    """MEVF's data_RAD/: trainset.json, testset.json, valset.json (a test copy), images/."""
    base = root / "data_RAD"
    _write_json(base / "trainset.json", VQA_RAD_TRAIN)
    _write_json(base / "testset.json", VQA_RAD_TEST)
    _write_json(base / "valset.json", VQA_RAD_TEST)  # M3AE's copy of test: must be ignored
    for i, name in enumerate(("synpic100.jpg", "synpic200.jpg", "synpic300.jpg")):
        _write_image(base / "images" / name, 40 * i)
    return base


# ------------------------------------------------------------------------------- VQA-RAD (OSF)
def _osf_row(qid, phrase, image, organ, question, qtype, answer, atype):
    return {
        "qid": qid,
        "phrase_type": phrase,
        "qid_linked_id": f"L{qid}",
        "image_case_url": "https://medpix/x",
        "image_name": image,
        "image_organ": organ,
        "evaluation": "given",
        "question": question,
        "question_rephrase": "NULL",
        "question_relation": "NULL",
        "question_frame": "NULL",
        "question_type": qtype,
        "answer": answer,
        "answer_type": atype,
    }


VQA_RAD_OSF = [
    _osf_row("0", "freeform", "synpic100.jpg", "CHEST", "Is the heart enlarged?", "SIZE", "Yes", "CLOSED"),
    _osf_row("1", "para", "synpic100.jpg", "CHEST", "Is there cardiomegaly?", "SIZE", "yes", "CLOSED "),
    _osf_row("2", "test_freeform", "synpic200.jpg", "ABD", "What organ is abnormal?", "ORGAN", "The Kidney", "OPEN"),
    _osf_row("3", "test_para", "synpic200.jpg", "ABD", "Which organ is abnormal?", "ORGAN", "kidney", "OPEN"),
    _osf_row("4", "test_paraphrase", "synpic200.jpg", "ABD", "How many cysts?", "COUNT", 3, "OPEN"),
]


def make_vqa_rad_osf(root: Path, xlsx_keys: bool = False) -> Path:
    """The OSF release: 'VQA_RAD Dataset Public.json' + 'VQA_RAD Image Folder/'.

    xlsx_keys: spell the fields as the xlsx columns (QID_unique, IMAGE, ...) instead.
    """
    rows = VQA_RAD_OSF
    if xlsx_keys:
        names = {
            "qid": "QID_unique",
            "phrase_type": "QID_para",
            "image_name": "IMAGE",
            "image_organ": "IMAGE_organ",
            "question": "QUESTION",
            "question_type": "Q_TYPE",
            "answer": "ANSWER",
            "answer_type": "A_TYPE",
        }
        rows = [{names.get(k, k): v for k, v in r.items()} for r in rows]
    base = root / "VQA_RAD"
    _write_json(base / "VQA_RAD Dataset Public.json", rows)
    _write_image(base / "VQA_RAD Image Folder" / "synpic100.jpg", 10)
    _write_image(base / "VQA_RAD Image Folder" / "synpic200.jpg", 20)
    return base


# ------------------------------------------------------------------------------------- SLAKE
def _slake_row(qid, img, question, answer, lang, location, modality, atype, content):
    return {
        "img_id": int(img.split("/")[0].removeprefix("xmlab")),
        "img_name": img,
        "question": question,
        "answer": answer,
        "q_lang": lang,
        "location": location,
        "modality": modality,
        "answer_type": atype,
        "base_type": "vqa",
        "content_type": content,
        "triple": ["vhead", "_", "_"],
        "qid": qid,
    }


SLAKE = {
    "train.json": [
        _slake_row(
            0,
            "xmlab1/source.jpg",
            "What modality is used to take this image?",
            "MRI",
            "en",
            "Abdomen",
            "MRI",
            "OPEN",
            "Modality",
        ),
        _slake_row(
            1,
            "xmlab1/source.jpg",
            "这张图片是用什么方式拍摄的?",
            "核磁共振",
            "zh",
            "Abdomen",
            "MRI",
            "OPEN",
            "Modality",
        ),
        _slake_row(
            2, "xmlab2/source.jpg", "Does the picture contain lung?", "Yes", "en", "Lung", "X-Ray", "CLOSED", "Organ"
        ),
    ],
    "validate.json": [
        _slake_row(
            10, "xmlab2/source.jpg", "Where is the abnormality?", "Left Lung", "en", "Lung", "X-Ray", "OPEN", "Position"
        ),
        _slake_row(11, "xmlab2/source.jpg", "异常在哪里?", "左肺", "zh", "Lung", "X-Ray", "OPEN", "Position"),
    ],
    "test.json": [
        _slake_row(
            20,
            "xmlab3/source.jpg",
            "How many kidneys are in this image?",
            "two",
            "en",
            "Abdomen",
            "CT",
            "OPEN",
            "Quantity",
        ),
        _slake_row(
            21, "xmlab9/source.jpg", "Is this a CT?", "yes", "en", "Abdomen", "CT", "CLOSED", "Modality"
        ),  # image missing
    ],
}


def make_slake(root: Path) -> Path:
    """Slake1.0/: train.json, validate.json, test.json, imgs/xmlabN/source.jpg."""
    base = root / "Slake1.0"
    for name, rows in SLAKE.items():
        _write_json(base / name, rows)
    for n in (1, 2, 3):
        _write_image(base / "imgs" / f"xmlab{n}" / "source.jpg", 30 * n)
    (base / "test_open.csv").write_text(
        "img_id,img_name,question,answer\n3,xmlab3/source.jpg,How many kidneys are in this image?,two\n"
    )
    return base


# -------------------------------------------------------------------------------------- ROCO
ROCO = {
    ("train", "radiology"): [
        ("ROCO_00001", " Axial computed tomography of the chest shows a nodule."),
        ("ROCO_00002", " Chest X-ray, no image downloaded."),
    ],
    ("train", "non-radiology"): [("ROCO_10001", " Photograph of a skin lesion.")],
    ("val", "radiology"): [("ROCO_00003", " MRI of the brain  with contrast.")],
    ("test", "radiology"): [("ROCO_00004", " Ultrasound of the left kidney.")],
}


def make_roco(root: Path, val_dir: str = "val") -> Path:
    """roco-dataset/data/{train,<val_dir>,test}/{radiology,non-radiology}/ with captions.txt,
    the extra metadata files, and fetched images (ROCO_00002's image missing)."""
    base = root / "roco-dataset"
    for (split, subset), rows in ROCO.items():
        folder = base / "data" / (val_dir if split == "val" else split) / subset
        folder.mkdir(parents=True)
        (folder / "captions.txt").write_text("".join(f"{rid}\t{cap}\n" for rid, cap in rows))
        (folder / "keywords.txt").write_text("".join(f"{rid}\t\tchest\tnodule\n" for rid, _ in rows))
        (folder / "licences.txt").write_text("ROCO_ID,PMC_ID,CC\n" + "".join(f"{rid},PMC1,CC BY\n" for rid, _ in rows))
        for i, (rid, _) in enumerate(rows):
            if rid != "ROCO_00002":
                _write_image(folder / "images" / f"{rid}.jpg", 50 + i)
    return base


# ----------------------------------------------------------------------------------- PMC-VQA
PMC_HEADER = ["Figure_path", "Question", "Answer", "Choice A", "Choice B", "Choice C", "Choice D", "Answer_label"]
PMC = {
    "train.csv": [
        [
            "PMC1_F1.jpg",
            "What does the arrow show?",
            "Diffuse uptake pattern",
            "A:Diffuse uptake pattern",
            "B:Focal uptake",
            "C:No uptake",
            "D:Ring uptake",
            "A",
        ],
        ["PMC2_F2.jpg", "Which imaging modality was used?", "", "A: CT", "B: MRI", "C: PET", "D: X-ray", "B"],
        ["PMC404_F1.jpg", "Where is the lesion?", "Left lobe", "A:Left lobe", "B:Right lobe", "C:Both", "D:None", "A"],
    ],
    "test.csv": [
        ["PMC2_F2.jpg", "Is the lesion enhancing?", "B:Yes", "A:No", "B:Yes", "C:Unclear", "D:Partly", "B"],
        ["PMC1_F1.jpg", "How many lesions?", "Two", "A:One", "B:Two", "C:Three", "D:Four", "B"],
    ],
    "test_clean.csv": [
        ["PMC1_F1.jpg", "How many lesions?", "Two", "A:One", "B:Two", "C:Three", "D:Four", "B"],
    ],
}


def make_pmc_vqa(
    root: Path, answer_column: str = "Answer", caption: bool = False, zipped: bool = False, clean: bool = False
) -> Path:
    """PMC-VQA/: train.csv, test.csv (+ test_clean.csv when ``clean``) and images/ (or images.zip).

    answer_column: "Answer" (HF card) or "Anwser" (first revision). caption: add the optional
    Caption column. PMC404_F1.jpg has no image.
    """
    base = root / "PMC-VQA"
    base.mkdir(parents=True)
    header = [answer_column if h == "Answer" else h for h in PMC_HEADER] + (["Caption"] if caption else [])
    for name, rows in PMC.items():
        if name == "test_clean.csv" and not clean:
            continue
        with (base / name).open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            for r in rows:
                writer.writerow(r + ([f"Figure caption of {r[0]}"] if caption else []))
    if zipped:
        with zipfile.ZipFile(base / "images.zip", "w") as zf:
            zf.writestr("images/PMC1_F1.jpg", image_bytes(70))
            zf.writestr("images/PMC2_F2.jpg", image_bytes(80))
    else:
        _write_image(base / "images" / "PMC1_F1.jpg", 70)
        _write_image(base / "images" / "PMC2_F2.jpg", 80)
    return base
