"""What to try next after a training, in sentences a beginner can act on."""

from __future__ import annotations

LOW_ACCURACY = 0.7
OVERFITTING_GAP = 0.1


def next_steps(train_accuracy: float | None, val_accuracy: float | None) -> list[str]:
    """Advice from the saved model's training and validation accuracy.

    Args:
        train_accuracy: Accuracy on the training images (0-1), or None when unknown.
        val_accuracy: Accuracy on the validation images (0-1), or None when unknown.

    Returns:
        One or more sentences, the most useful first.
    """
    tips = []
    if val_accuracy is None:
        return ["Train for at least one epoch to see how well the model does."]
    if val_accuracy < LOW_ACCURACY:
        tips.append(
            "Accuracy is low: try more epochs, a later cut layer, or check on the Data page that the classes "
            "really look different."
        )
    if train_accuracy is not None and train_accuracy - val_accuracy > OVERFITTING_GAP:
        tips.append(
            "Training accuracy is well above validation accuracy (overfitting): try more dropout, augmentation, "
            "or more images."
        )
    if not tips:
        tips.append("The model tells the classes apart well on images it never trained on.")
    return tips
