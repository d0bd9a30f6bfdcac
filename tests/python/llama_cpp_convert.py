"""Runs llama.cpp's convert_hf_to_gguf.py (from the directory scripts/setup.sh unpacks) on one of
lathe's tiny models:

    python llama_cpp_convert.py LLAMA_CPP_DIR PRE MODEL_DIR --outtype f32 --outfile OUT.gguf

Two things the tiny models lack are supplied, and nothing else is changed:
- they have a tokenizer.json but no sentencepiece tokenizer.model: the converter imports the
  sentencepiece package before it looks for that file, so without the package it never reaches its
  fallbacks; here the missing file raises FileNotFoundError as it would with the package installed;
- llama.cpp recognises a byte-level BPE pre-tokenizer by hashing how a real vocabulary splits a test
  text, and the tiny vocabularies were trained here: when no hash matches, PRE (the name of the
  split the tokenizer.json uses, e.g. qwen2) is written as tokenizer.ggml.pre instead of failing.
"""
import runpy
import sys

llama_cpp, pre = sys.argv[1], sys.argv[2]
sys.argv = [f"{llama_cpp}/convert_hf_to_gguf.py", *sys.argv[3:]]
sys.path.insert(0, llama_cpp)

import conversion.base as base  # noqa: E402  (the converter's own package)

create_vocab_sentencepiece = base.TextModel._create_vocab_sentencepiece
get_vocab_base_pre = base.TextModel.get_vocab_base_pre


def no_sentencepiece_file(self):
    if not (self.dir_model / "tokenizer.model").is_file():
        raise FileNotFoundError(self.dir_model / "tokenizer.model")
    return create_vocab_sentencepiece(self)


def declared_pre(self, tokenizer):
    try:
        return get_vocab_base_pre(self, tokenizer)
    except NotImplementedError:
        return pre


base.TextModel._create_vocab_sentencepiece = no_sentencepiece_file
base.TextModel.get_vocab_base_pre = declared_pre
runpy.run_path(sys.argv[0], run_name="__main__")
