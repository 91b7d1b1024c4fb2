from setuptools import find_packages, setup


def version():
    scope = {}
    with open('restv2_mm/version.py') as f:
        exec(f.read(), scope)
    return scope['__version__']


with open('README.md', encoding='utf-8') as f:
    long_description = f.read()

setup(
    name='restv2-mm',
    version=version(),
    description='ResTv2 backbones for MMDetection 3.x and MMSegmentation 1.x',
    long_description=long_description,
    long_description_content_type='text/markdown',
    packages=find_packages(include=['restv2_mm', 'restv2_mm.*']),
    python_requires='>=3.8',
    # torch and mmcv are installed by tools/setup_env.sh (a pinned CPU torch, mmcv built with ops);
    # the bounds here only state what the code needs.
    install_requires=[
        'torch>=2.1', 'numpy', 'mmengine>=0.10.5,<0.11', 'mmcv>=2.0.0,<2.2.0', 'mmdet>=3.3.0,<3.4',
        'mmsegmentation>=1.2.2,<1.3', 'ftfy', 'regex', 'matplotlib', 'pycocotools', 'tqdm',
        'onnx>=1.16', 'onnxruntime>=1.18',  # tools/deployment (setup_env.sh pins the tested ones)
    ],
    extras_require={'tests': ['pytest>=7', 'pytest-timeout']},
    license='Apache-2.0',
    zip_safe=False,
)
