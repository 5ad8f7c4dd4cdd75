"""Install mmaction-multigrid."""
import re
from pathlib import Path
from setuptools import find_packages, setup

HERE = Path(__file__).parent


def requirements(name: str) -> list:
    """Requirement lines of requirements/NAME.txt (no comments)."""
    lines = (HERE / 'requirements' / f'{name}.txt').read_text().splitlines()
    return [
        line.strip() for line in lines
        if line.strip() and not line.startswith('#')
    ]


VERSION = re.search(r"__version__ = '([^']+)'",
                    (HERE / 'mmaction_multigrid' /
                     'version.py').read_text()).group(1)

setup(
    name='mmaction-multigrid',
    version=VERSION,
    description='Multigrid training (Wu et al., CVPR 2020) for '
    'MMAction2 1.x / MMEngine',
    long_description=(HERE / 'README.md').read_text(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['mmaction_multigrid*']),
    package_data={'mmaction_multigrid': ['configs/*.py']},
    python_requires='>=3.8',
    # torch and mmcv are installed by the user for their CUDA version
    # (MMAction2 convention), so they are not listed here.
    install_requires=requirements('runtime'),
    extras_require=dict(
        plot=requirements('plot'), tests=requirements('tests')),
    entry_points={
        'console_scripts':
        ['mmaction-multigrid=mmaction_multigrid.tools.cli:main'],
    },
    license='Apache-2.0',
)
