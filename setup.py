"""The one thing pyproject.toml cannot say: the optional C extension ``qwen_fluent.forward._scan``.

Optional: where it does not build (no C compiler, no Python headers), the
install goes on without it and the receiver reads every payload on its
pure-Python typed path (``qwen_fluent.forward.scan``), a few times slower and
otherwise the same.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "qwen_fluent.forward._scan",
            sources=["qwen_fluent/forward/_scan.c"],
            extra_compile_args=["-O2"],
            optional=True,
        )
    ]
)
