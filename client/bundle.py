"""The deployment folder export writes and the client reads.

::

    deployment/
      model_repository/       Triton model repository (config.pbtxt + 1/model.onnx per model)
      bundle/
        manifest.json         SHA-256 of every file of the deployment, model identities,
                              package versions, opsets, parity figures, the serving
                              profile (fp32, cpu-int8 or cpu-int8-vnni), why it
                              was chosen, and each graph's precision
        settings.json         preprocessing and serving settings (ServingSettings)
        blend.json            blend weights
        tokenizer.json, special_tokens_map.json
        retrieval.faiss, retrieval_log_prices.npy, retrieval_groups.npy
        price_priors.json     brand and unit-price tables of the stacker's price priors
        ocr_characters.json   the OCR recogniser's alphabet (its outputs are indices into it)
      MODEL_CARD.md

Everything is JSON, .npy (read with allow_pickle=False), FAISS or ONNX: never pickle.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from client.blend import COMPONENTS
from client.errors import BundleError
from client.models import ModelDims
from client.priors import PricePriors
from client.retrieval import NeighbourIndex
from client.text import TextTokenizer

REPOSITORY_DIR = "model_repository"
BUNDLE_DIR = "bundle"
MANIFEST_FILE = "manifest.json"
SETTINGS_FILE = "settings.json"
BLEND_FILE = "blend.json"
TOKENIZER_FILE = "tokenizer.json"
PRIORS_FILE = "price_priors.json"
OCR_CHARACTERS_FILE = "ocr_characters.json"
MODEL_FILE = "model.onnx"
MODEL_SHA_PARAMETER = "model_sha256"
PRECISION_PARAMETER = "precision"  # "int8" in the config of a graph quantised for CPU INT8


@dataclass(frozen=True)
class ServingSettings:
    """What the client must do exactly as training did."""

    image_size: int
    max_tokens: int
    pad_token: str
    ocr_engine: str
    numeric_features: tuple[str, ...]
    retrieval_k: int
    image_dim: int
    text_dim: int

    @property
    def dims(self) -> ModelDims:
        return ModelDims(image_dim=self.image_dim, text_dim=self.text_dim,
                         numeric_dim=len(self.numeric_features), image_size=self.image_size)


def sha256_file(path: Path) -> str:
    """SHA-256 of a file, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def deployment_files(root: Path) -> list[Path]:
    """Every file of a deployment that the manifest covers (all but the manifest itself)."""
    files = [p for p in sorted(root.rglob("*")) if p.is_file() and p.name != MANIFEST_FILE]
    return [p for p in files if "__pycache__" not in p.parts]


def write_manifest(root: Path, details: dict) -> Path:
    """Writes bundle/manifest.json with the SHA-256 of every file of the deployment and `details`."""
    checksums = {str(p.relative_to(root)): sha256_file(p) for p in deployment_files(root)}
    path = root / BUNDLE_DIR / MANIFEST_FILE
    path.write_text(json.dumps({"files": checksums, **details}, indent=2))
    return path


@dataclass
class Deployment:
    """A verified deployment folder.

    Attributes:
        root: the folder.
        settings: preprocessing and serving settings.
        blend_weights: one weight per component (COMPONENTS order).
        manifest: the parsed manifest.
    """

    root: Path
    settings: ServingSettings
    blend_weights: tuple[float, ...]
    manifest: dict

    @property
    def repository(self) -> Path:
        return self.root / REPOSITORY_DIR

    @property
    def bundle(self) -> Path:
        return self.root / BUNDLE_DIR

    @property
    def profile(self) -> str:
        """The serving profile it was exported with (export-bundle --profile): fp32, cpu-int8 or cpu-int8-vnni."""
        return self.manifest.get("profile", "fp32")

    @property
    def cpu_flags_needed(self) -> frozenset[str]:
        """CPU flags of which the serving CPU needs one (empty: any CPU), as the profile recorded them."""
        return frozenset(self.manifest.get("profile_cpu_flags", ()))

    def model_path(self, model: str) -> Path:
        return self.repository / model / "1" / MODEL_FILE

    def model_sha256(self, model: str) -> str:
        return self.manifest["files"][f"{REPOSITORY_DIR}/{model}/1/{MODEL_FILE}"]

    def tokenizer(self) -> TextTokenizer:
        return TextTokenizer(self.bundle / TOKENIZER_FILE, self.settings.max_tokens, self.settings.pad_token)

    def neighbour_index(self) -> NeighbourIndex:
        return NeighbourIndex.load(self.bundle)

    def price_priors(self) -> PricePriors:
        """The brand and unit-price tables the stacker's price priors are computed from.

        Raises:
            BundleError: the file is unreadable or of another version.
        """
        try:
            return PricePriors.load(self.bundle / PRIORS_FILE)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            raise BundleError(f"{self.bundle / PRIORS_FILE}: unusable ({error}); export the deployment again") from None

    def ocr_characters(self) -> list[str]:
        """The alphabet of the served OCR recogniser (model ocr_recognizer)."""
        characters = _read_json(self.bundle / OCR_CHARACTERS_FILE)
        if not isinstance(characters, list) or not all(isinstance(c, str) for c in characters):
            raise BundleError(f"{self.bundle / OCR_CHARACTERS_FILE}: not a list of characters; export again")
        return characters

    @classmethod
    def load(cls, root: str | Path, verify: bool = True) -> Deployment:
        """Reads a deployment, first checking every file against the manifest.

        Raises:
            BundleError: the manifest is missing or unreadable, or a file is missing, added or
                changed since export (names them all).
        """
        root = Path(root)
        manifest_path = root / BUNDLE_DIR / MANIFEST_FILE
        if not manifest_path.is_file():
            raise BundleError(f"{root}: no {BUNDLE_DIR}/{MANIFEST_FILE}; is this a folder written by export-bundle?")
        manifest = _read_json(manifest_path)
        if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
            raise BundleError(f"{manifest_path}: no 'files' checksum table; export the deployment again")
        if verify:
            verify_checksums(root, manifest["files"])
        raw = _read_json(root / BUNDLE_DIR / SETTINGS_FILE)
        blend = _read_json(root / BUNDLE_DIR / BLEND_FILE)
        try:
            settings = ServingSettings(**{**raw, "numeric_features": tuple(raw["numeric_features"])})
            components, weights = tuple(blend["components"]), tuple(float(w) for w in blend["weights"])
        except (KeyError, TypeError, ValueError) as error:
            raise BundleError(f"{root}: unusable {SETTINGS_FILE} or {BLEND_FILE} ({error!r}); export again") from None
        if components != COMPONENTS:
            raise BundleError(f"{root}: blend components {list(components)} are not {list(COMPONENTS)}")
        return cls(root, settings, weights, manifest)


def _read_json(path: Path):
    """A deployment's JSON file; BundleError when it is missing, unreadable or not JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(f"{path}: unreadable ({error}); export the deployment again") from None


def verify_checksums(root: Path, expected: dict[str, str]) -> None:
    """Raises BundleError naming every file that is missing, unexpected or changed."""
    present = {str(p.relative_to(root)) for p in deployment_files(root)}
    problems = [f"missing: {name}" for name in sorted(set(expected) - present)]
    problems += [f"not in the manifest: {name}" for name in sorted(present - set(expected))]
    problems += [
        f"checksum mismatch: {name}"
        for name in sorted(set(expected) & present)
        if sha256_file(root / name) != expected[name]
    ]
    if problems:
        raise BundleError(f"{root}: the deployment does not match its manifest:\n  " + "\n  ".join(problems))


def save_settings(bundle_dir: Path, settings: ServingSettings) -> Path:
    path = bundle_dir / SETTINGS_FILE
    path.write_text(json.dumps(asdict(settings), indent=2))
    return path

