"""Test helpers shipped with the package: hypothesis strategies derived from the construct
declarations, event factories, and golden-file helpers. Imports hypothesis lazily so that
the package itself does not depend on it."""
