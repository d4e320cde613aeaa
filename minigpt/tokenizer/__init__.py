"""Text to token ids and back (the book's chapter 2).

    bpe.py          Tokenizer: GPT-2's byte-level BPE (encode, decode, load and save, train)
    bpe_merge.py    the merge loop over one word, in Python and as a Numba kernel
    bpe_fast.py     a whole text's words merged in one batch (the fast path of ``encode``)
    bpe_train.py    learning a new vocabulary (``Tokenizer.train``)
    formats.py      OpenAI, Hugging Face and tiktoken vocabulary files
    simple.py       the book's first tokenizers: SimpleTokenizerV1 and V2
"""

from minigpt.tokenizer.bpe import GPT2_PATTERN, R50K_PATTERN, Tokenizer  # noqa: F401
from minigpt.tokenizer.simple import SimpleTokenizerV1, SimpleTokenizerV2  # noqa: F401
