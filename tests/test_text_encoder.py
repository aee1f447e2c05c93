"""Text encoder folders as sentence-transformers defines them: pooling, Dense and Normalize read
from the folder, checked against sentence-transformers itself on tiny random models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from client.models import TEXT_ENCODER, ModelDims
from export.onnx_export import EMBEDDING, LOG_PRICE, TorchExporter
from export.parity import BATCH_SIZES, compare, load_session, run_in_batches
from training.encoders import load_text_encoder, make_tokenizer
from training.finetune import PriceRegressor
from training.sentence_folder import UnsupportedModelError

TEXTS = ["tea 12 oz", "pack of 12 coffee", "coffee", "tea tea tea pack of 12 oz coffee coffee", "oz"]
# filler words: the exporter's example inputs use token ids 1000-2000
WORDS = ["tea", "coffee", "oz", "pack", "of", "12", *(f"filler{i}" for i in range(2000))]
HIDDEN = 16


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    """A tiny random BertModel and its word-piece tokenizer, saved the transformers way."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    directory = tmp_path_factory.mktemp("tiny-bert")
    vocab = directory / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=5 + len(WORDS), hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)
    BertModel(config).save_pretrained(directory)
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(directory)
    return directory


def sentence_transformer(tiny_bert: Path, target: Path, pooling, dense: int = 0, normalize: bool = False) -> Path:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules as models

    torch.manual_seed(1)
    modules = [models.Transformer(str(tiny_bert)), models.Pooling(HIDDEN, pooling_mode=pooling)]
    width = HIDDEN * (1 if isinstance(pooling, str) else len(pooling))
    for out_features in [8, 6][:dense]:
        modules.append(models.Dense(width, out_features))  # Tanh, sentence-transformers' default
        width = out_features
    if normalize:
        modules.append(models.Normalize())
    SentenceTransformer(modules=modules, device="cpu").save(str(target))
    return target


def ours(model_dir: Path, texts: list[str]) -> np.ndarray:
    encoder, identity = load_text_encoder(str(model_dir))
    tokenizer = make_tokenizer(str(model_dir), 32)
    input_ids, attention_mask = tokenizer.pad(tokenizer.encode(texts))
    with torch.inference_mode():
        embedding = encoder(torch.from_numpy(input_ids), torch.from_numpy(attention_mask)).numpy()
    assert embedding.shape == (len(texts), identity["embedding_dim"])
    return embedding


def reference(model_dir: Path, texts: list[str]) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(model_dir), device="cpu").encode(texts, convert_to_numpy=True)


@pytest.mark.parametrize(("pooling", "dense", "normalize"), [
    ("mean", 0, True),  # all-MiniLM / all-mpnet
    ("mean", 0, False),
    ("cls", 0, False),
    ("max", 0, True),
    ("mean", 1, False),
    ("cls", 2, True),
    (["cls", "max", "mean"], 1, False),
], ids=["mean+normalize", "mean", "cls", "max+normalize", "mean+dense", "cls+2dense+normalize", "cls,max,mean+dense"])
def test_embeddings_equal_sentence_transformers(tiny_bert, tmp_path, pooling, dense, normalize):
    folder = sentence_transformer(tiny_bert, tmp_path / "model", pooling, dense, normalize)
    expected = reference(folder, TEXTS)
    np.testing.assert_allclose(ours(folder, TEXTS), expected, atol=1e-6)
    norms = np.linalg.norm(expected, axis=1)
    assert np.allclose(norms, 1.0) == normalize  # the variant really differs in what is tested


def test_a_plain_transformers_folder_is_mean_pooled_as_sentence_transformers_does(tiny_bert):
    np.testing.assert_allclose(ours(tiny_bert, TEXTS), reference(tiny_bert, TEXTS), atol=1e-6)


def test_saved_encoder_is_a_sentence_transformers_folder_with_its_dense_weights(tiny_bert, tmp_path):
    """What fine-tuning saves: changed weights (transformer and Dense) survive, in the base's layout."""
    folder = sentence_transformer(tiny_bert, tmp_path / "base", "cls", dense=1, normalize=True)
    encoder, _ = load_text_encoder(str(folder))
    with torch.no_grad():
        encoder.dense[0][0].weight.mul_(-2.0)
        encoder.transformer.embeddings.word_embeddings.weight.add_(0.5)
    encoder.save(tmp_path / "tuned")
    tokenizer = make_tokenizer(str(folder), 32)
    input_ids, attention_mask = tokenizer.pad(tokenizer.encode(TEXTS))
    with torch.inference_mode():
        changed = encoder(torch.from_numpy(input_ids), torch.from_numpy(attention_mask)).numpy()
    assert not np.allclose(changed, reference(folder, TEXTS), atol=1e-3)
    np.testing.assert_allclose(reference(tmp_path / "tuned", TEXTS), changed, atol=1e-6)
    np.testing.assert_allclose(ours(tmp_path / "tuned", TEXTS), changed, atol=1e-6)


def test_concatenated_pooling_with_dense_exports_with_parity(tiny_bert, tmp_path):
    folder = sentence_transformer(tiny_bert, tmp_path / "model", ["cls", "max", "mean"], dense=1)
    encoder, identity = load_text_encoder(str(folder))
    model = PriceRegressor(encoder).eval()
    exporter = TorchExporter(TEXT_ENCODER, ModelDims(text_dim=identity["embedding_dim"]),
                             {"text_embedding": EMBEDDING, "text_log_price": LOG_PRICE})
    path = exporter.export(model, tmp_path / "text_encoder.onnx")
    tokenizer = make_tokenizer(str(folder), 32)
    input_ids, attention_mask = tokenizer.pad(tokenizer.encode(TEXTS * 3))
    with torch.inference_mode():
        embedding, _ = model(torch.from_numpy(input_ids), torch.from_numpy(attention_mask))
    session = load_session(str(path))
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    runs = {size: run_in_batches(session, inputs, size)[0] for size in BATCH_SIZES}
    result = compare(TEXT_ENCODER, "text_embedding", embedding.numpy(), runs, EMBEDDING)
    assert result.passed, result.describe()


def test_unsupported_pooling_is_refused_naming_the_supported_modes(tiny_bert, tmp_path):
    folder = sentence_transformer(tiny_bert, tmp_path / "model", "weightedmean")
    with pytest.raises(UnsupportedModelError, match=r"weightedmean is not supported; supported: cls, max, mean"):
        load_text_encoder(str(folder))


def test_unsupported_module_is_refused_by_name(tiny_bert, tmp_path):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules as models

    modules = [models.Transformer(str(tiny_bert)), models.Pooling(HIDDEN), models.LayerNorm(HIDDEN)]
    SentenceTransformer(modules=modules, device="cpu").save(str(tmp_path / "model"))
    with pytest.raises(UnsupportedModelError, match=r"LayerNorm.*supported: a Transformer first, then Pooling, Dense"):
        load_text_encoder(str(tmp_path / "model"))
