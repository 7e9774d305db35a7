"""vxgate: a Salmon mail gateway that puts Dr.Web vxCube in the path of e-mail."""
from setuptools import find_packages, setup

setup(
    name="vxgate",
    version="0.1.0",
    description="Postfix content filter and BCC monitor backed by the Dr.Web vxCube sandbox",
    packages=find_packages(include=["salmon_app", "salmon_app.*", "handlers", "config"]),
    include_package_data=True,
    package_data={"salmon_app.web": ["templates/*.html", "static/*"]},
    python_requires=">=3.11",
    install_requires=[
        "salmon-mail==3.3.0",
        "requests==2.34.2",
        "tenacity==9.2.1",
        "peewee==4.5.3",
        "lupa==2.8",
        "google-re2==1.1.20251105",
        "pyzipper==0.4.0",
        "puremagic==1.30",
        "tnefparse==1.4.0",
        "rarfile==4.5",
        "py7zr==1.1.4",
        "jinja2==3.1.6",
        "prometheus-client==0.26.0",
        "psycopg==3.3.9",
        "psycopg-binary==3.3.9",
        # the web console (salmon_app/web): cheroot rather than waitress because it speaks TLS
        "flask==3.1.3",
        "flask-wtf==1.3.0",
        "flask-limiter==4.1.1",
        "cheroot==11.1.2",
        "argon2-cffi==25.1.0",
    ],
    extras_require={
        "test": ["pytest==9.2.0", "pytest-timeout==2.4.0", "aiosmtpd==1.4.6",
                 # drives Debian's chromium through chromium-driver (4.52 needs a newer certifi than PyPI has)
                 "selenium==4.51.0"],
    },
    # `salmon` is Salmon's command wrapped with vxgate's start/stop rules (salmon_app/salmonctl.py);
    # pip installs dependencies first, so this script replaces salmon-mail's own.
    entry_points={"console_scripts": ["vxgate = salmon_app.cli:main", "salmon = salmon_app.salmonctl:main"]},
)
