"""Work sized for the device changes how the beam search computes, never what it gives: the
additive scores in one chunk (a GPU with memory to spare) or in cache-sized chunks (the CPU), and
the chunk sizes each device gets. Behaviour only: nothing here is timed."""

from __future__ import annotations

import torch

from captioner.attention import CHUNK_BYTES, DEVICE_SHARE, Attention, chunk_images

GiB = 1 << 30


@torch.no_grad()
def test_one_chunk_equals_cache_sized_chunks():
    torch.manual_seed(0)
    B, R, L, A = 25, 3, 196, 512                          # 1.2 MB of temporary per image: several chunks
    attention = Attention("additive", encoder_dim=64, hidden_dim=32, attention_dim=A)
    keys = attention.keys(torch.randn(B, L, 64).relu_())  # (B, L, A)
    h = torch.randn(B * R, 32)
    query = attention.query_proj(h).view(B, R, 1, A)
    cpu_chunk = chunk_images("cpu", B, R * L * A * 4)
    assert 1 < cpu_chunk < B and B % cpu_chunk            # several chunks, the last one short
    chunked = attention._beam_additive_scores(keys, query)                   # the CPU's default
    whole = attention._beam_additive_scores(keys, query, images=B)           # what a roomy GPU runs
    single = attention._beam_additive_scores(keys, query, images=1)
    assert torch.allclose(whole, chunked, atol=1e-5, rtol=0)
    assert torch.allclose(single, chunked, atol=1e-5, rtol=0)
    with torch.enable_grad():                             # the plain tanh formula, which training runs
        plain = attention.scores(keys, h).view(B, R, L)
    assert torch.allclose(whole, plain, atol=1e-4, rtol=0)


def test_the_cpu_gets_cache_sized_chunks_whatever_memory_is_free():
    per_image = 3 * 196 * 512 * 4
    for free in (None, 1 << 20, 100 * GiB):
        assert chunk_images("cpu", 256, per_image, free) == CHUNK_BYTES // per_image == 3
    assert chunk_images("cpu", 2, per_image) == 2                  # never more than there are images
    assert chunk_images("cpu", 256, CHUNK_BYTES * 4) == 1          # one image bigger than the cache: one


def test_a_gpu_with_room_computes_the_scores_in_one_chunk_and_otherwise_in_the_fewest_equal_chunks():
    per_image = 3 * 196 * 512 * 4                                  # 256 images: 308 MB
    assert chunk_images("cuda", 256, per_image, 100 * GiB) == 256
    assert chunk_images("cuda", 256, per_image, None) == 256      # free memory unknown (another backend)
    free = 256 * per_image                                         # the whole temporary would fill it all
    images = chunk_images("cuda", 256, per_image, free)
    chunks = -(-256 // images)
    assert images * per_image <= DEVICE_SHARE * free              # each chunk within the share
    assert chunks == 4 and images == 64                            # the fewest chunks, equal
    assert chunk_images("cuda", 10, per_image, 1) == 1             # no room at all: one image at a time
