"""Model weights in and out: Hugging Face checkpoints, OpenAI's TensorFlow files, downloads.

    pretrained.py     from_pretrained / save_pretrained / load_model: name mapping, strict loading
    download.py       fetching GPT-2's files once, verified by sha256
    safetensors_io.py reading and writing .safetensors files
    tf_checkpoint.py  reading OpenAI's original TensorFlow checkpoints (what the book downloads)
"""
