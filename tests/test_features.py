"""Feature extraction: the same numbers as the backbone on eval_preprocess output; a deterministic subset."""

import keras
import numpy as np

from conftest import FMNIST
from conftest import needs_fmnist
from tf_mocov3.data import augment
from tf_mocov3.data import order
from tf_mocov3.data import sources as data
from tf_mocov3.evaluation import features
from tf_mocov3.models import vit
from tf_mocov3.training import distribute


def test_subset_is_a_seeded_permutation_prefix_kept_in_split_order():
    a = order.subset_indices(60000, 0.1, seed=0)
    assert len(a) == 6000 and np.all(np.diff(a) > 0)
    np.testing.assert_array_equal(a, np.sort(np.random.default_rng(0).permutation(60000)[:6000]))
    np.testing.assert_array_equal(a, order.subset_indices(60000, 0.1, seed=0))
    assert not np.array_equal(a, order.subset_indices(60000, 0.1, seed=1))
    np.testing.assert_array_equal(order.subset_indices(60000, 0.1, seed=0, max_examples=100),
                                  np.sort(np.random.default_rng(0).permutation(60000)[:100]))
    np.testing.assert_array_equal(order.subset_indices(50, 1.0), np.arange(50))


@needs_fmnist
def test_extract_features_equals_the_backbone_on_eval_preprocess_output():
    backbone = vit.build_backbone("vit_micro", 16, embed_dim=32, depth=2, num_heads=2)
    config = {"name": "fashion_mnist_idx", "path": FMNIST}
    got, labels = features.extract_features(backbone, config, "test", image_size=16, batch_size=32,
                                            fraction=0.01, seed=3)
    images, all_labels = data.load_fashion_mnist_idx(FMNIST, "test")
    index = order.subset_indices(10000, 0.01, seed=3)
    assert got.shape == (100, 32) and got.dtype == np.float32
    np.testing.assert_array_equal(labels, all_labels[index])
    expected = backbone(np.stack([augment.eval_preprocess(images[i], 16).numpy() for i in index]),
                        training=False)
    np.testing.assert_allclose(got, np.asarray(expected), atol=1e-5, rtol=1e-5)


def test_two_replicas_give_the_features_of_one():
    rng = np.random.default_rng(0)
    images = rng.normal(0, 1, (23, 16, 16, 3)).astype(np.float32)  # 23: the last batch is partial and odd
    labels = np.arange(23) % 5
    batches = [(images[i:i + 8], labels[i:i + 8]) for i in range(0, 23, 8)]

    def backbone():
        keras.utils.set_random_seed(1)
        return vit.build_backbone("vit_micro", 16, embed_dim=32, depth=2, num_heads=2)

    one = features.features_of(features.make_forward(backbone(), 16), batches, 23, progress=False)
    two_replicas = distribute.mirrored_strategy(["/cpu:0", "/cpu:1"])
    with two_replicas.scope():
        mirrored = backbone()
    forward = features.make_forward(mirrored, 16, strategy=two_replicas)
    assert forward.replicas == 2
    two = features.features_of(forward, batches, 23, progress=False)
    np.testing.assert_array_equal(one[1], two[1])
    np.testing.assert_allclose(one[0], two[0], atol=1e-5)
