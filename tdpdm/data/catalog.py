"""The data sets the project knows: file names, classes, mirrors and checksums.

Three kinds of checksum, because the same data travels in different gzip wrappers:
``sha256`` is the gzip file as kept in the project's shared copy (../shared/datasets,
SHA256SUMS there); ``mirror_sha256`` is the gzip file as the public mirrors serve it (it differs:
the shared copies were re-compressed); ``raw_sha256`` is the decompressed IDX file, which is the
same in both and so identifies the data whatever the compression. Downloads accept any of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tdpdm.data.errors import DataError

#: Keys of DatasetSpec.files, in a stable order.
FILE_KEYS: tuple[str, ...] = ("train-images", "train-labels", "test-images", "test-labels")

STANDARD_FILES: dict[str, str] = {
    "train-images": "train-images-idx3-ubyte",
    "train-labels": "train-labels-idx1-ubyte",
    "test-images": "t10k-images-idx3-ubyte",
    "test-labels": "t10k-labels-idx1-ubyte",
}


@dataclass(frozen=True, kw_only=True)
class DatasetSpec:
    """What a data set looks like on disk and how to check that a copy is the real one."""

    name: str
    class_names: tuple[str, ...]
    sha256: dict[str, str] = field(hash=False)
    mirrors: tuple[str, ...]
    train_size: int
    test_size: int
    image_shape: tuple[int, int] = (28, 28)
    num_classes: int = 10
    files: dict[str, str] = field(default_factory=lambda: dict(STANDARD_FILES), hash=False)
    mirror_sha256: dict[str, str] = field(default_factory=dict, hash=False)
    raw_sha256: dict[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if len(self.class_names) != self.num_classes:
            n = len(self.class_names)
            raise ValueError(f"{self.name}: {n} class names, expected {self.num_classes}")
        for what in ("files", "sha256"):
            if set(getattr(self, what)) != set(FILE_KEYS):
                raise ValueError(f"{self.name}: {what} must have exactly the keys {FILE_KEYS}")

    @property
    def channels(self) -> int:
        """Grey, as every built-in (the same attribute as `sources.SourceInfo`)."""
        return 1

    @property
    def image_size(self) -> int:
        """The side of the (square) images (the same attribute as `sources.SourceInfo`)."""
        return self.image_shape[0]

    def accepted_gz_sha256(self, key: str) -> frozenset[str]:
        """Every known-good sha256 of the gzip file for ``key``."""
        return frozenset(h for h in (self.sha256.get(key), self.mirror_sha256.get(key)) if h)

    def split_keys(self, split: str) -> tuple[str, str]:
        """(images key, labels key) for 'train' or 'test'."""
        if split not in ("train", "test"):
            raise DataError(f"{self.name}: unknown split {split!r}; use 'train' or 'test'")
        return f"{split}-images", f"{split}-labels"


MNIST = DatasetSpec(
    name="mnist",
    class_names=tuple(str(d) for d in range(10)),
    train_size=60_000,
    test_size=10_000,
    mirrors=(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ),
    sha256={
        "train-images": "0b367032e93c5d0cea0925647cfdb18614af8ee15f83e6f2fc2ad904a6835971",
        "train-labels": "1787548bbe0bff1ec2ecdc0ef292b02df999e2d1a6002d27500982c652b17203",
        "test-images": "1a1a05eab793c14bb050b398624a11b0ffd1a2953baed553b1b9bd079e2a20be",
        "test-labels": "b91679a0acfe4ba0e50a2437a903084cba1f5f92592b016a25a7dfd00455798b",
    },
    mirror_sha256={
        "train-images": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "train-labels": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "test-images": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "test-labels": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    },
    raw_sha256={
        "train-images": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "test-images": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "test-labels": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
)

FASHION_MNIST = DatasetSpec(
    name="fashion-mnist",
    class_names=(
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
    train_size=60_000,
    test_size=10_000,
    # HTTP only (the bucket's website endpoint); integrity comes from the checksums.
    mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    sha256={
        "train-images": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
        "train-labels": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
        "test-images": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
        "test-labels": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
    },
    mirror_sha256={
        "train-images": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        "train-labels": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        "test-images": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        "test-labels": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
    },
    raw_sha256={
        "train-images": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "test-images": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "test-labels": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
)

DATASETS: dict[str, DatasetSpec] = {s.name: s for s in (MNIST, FASHION_MNIST)}


def get_spec(name: str) -> DatasetSpec:
    """The spec for a data set name; DataError listing the known names otherwise."""
    try:
        return DATASETS[name]
    except (KeyError, TypeError):
        known = ", ".join(sorted(DATASETS))
        raise DataError(f"unknown dataset {name!r}; known: {known}") from None
