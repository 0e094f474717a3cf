"""Example apps; ``stepline dev`` loads ``stepline.examples.app:app`` when given none."""
