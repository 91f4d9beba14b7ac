"""The services of a running Core, one resource and one owner each; `tap` composes them."""
