import pytest
import torch

from lamina.errors import UsageError
from lamina.models import count_parameters, get_model, list_models, register_model

CLASSIFIERS = [spec.name for spec in list_models("classify")]


def test_the_families_the_course_teaches_are_registered():
    assert {"mlp", "lenet5", "vgg-s", "resnet20", "resnet18", "densenet-s"} <= set(CLASSIFIERS)


@pytest.mark.parametrize("name", CLASSIFIERS)
@pytest.mark.parametrize("channels, size", [(1, 28), (3, 20)])
def test_every_classifier_on_tiny_inputs(name, channels, size):
    torch.manual_seed(0)
    model = get_model("classify", name, in_channels=channels, num_classes=5, image_size=size)
    x = torch.randn(3, channels, size, size)
    logits = model(x)
    assert logits.shape == (3, 5)
    assert torch.isfinite(logits).all()
    logits.logsumexp(1).sum().backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not dead, f"no gradient reached: {dead[:3]}"
    assert model.forward_features(x).shape == (3, model.num_features)


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_head_can_be_replaced_and_backbone_frozen(name):
    model = get_model("classify", name, in_channels=1, num_classes=10, image_size=28)
    model.reset_head(4)
    model.freeze_features()
    model.train()
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 4)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"head.weight", "head.bias"}
    assert not model.features.training  # frozen batch-norm statistics stay put


def test_registry_rejects_duplicates_and_unknown_names():
    with pytest.raises(ValueError, match="already registered"):
        register_model("classify", "mlp", "again")(lambda: None)
    with pytest.raises(UsageError, match="unknown model 'nope'.*vgg-s"):
        get_model("classify", "nope")
    with pytest.raises(UsageError, match="unexpected keyword"):
        get_model("classify", "vgg-s", no_such_argument=1)


def test_parameter_counts_are_what_the_listing_says():
    assert count_parameters(get_model("classify", "lenet5")) == 61_706  # the classic LeNet-5 size
