"""Dataset sources; importing this package registers each of them."""

from cnnlab.data.sources import cifar, digits, image_folder, mnist, synthetic, tensor_file  # noqa: F401
