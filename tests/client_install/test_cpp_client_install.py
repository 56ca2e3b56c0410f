"""The C++ client installed with `cmake --install --component mnemo_client` into a prefix, used
by a separate CMake project (consumer/: find_package(mnemo_client CONFIG)) that talks to a real
server. Only the client's files may be installed: no server, engine or test binaries.

The consumer is built in a fixed directory of the build tree, so ccache (when the build uses it)
makes a repeated run quick.
"""

import os
import shutil
import subprocess

from conftest import HERE, required_env, run


def test_installed_package_builds_a_consumer_that_talks_to_a_server(server):
    binary_dir = required_env("MNEMO_BINARY_DIR")
    cmake = os.environ.get("CMAKE_COMMAND", "cmake")
    work = os.path.join(binary_dir, "tests", "client_install")
    prefix, build = os.path.join(work, "prefix"), os.path.join(work, "consumer-build")
    shutil.rmtree(work, ignore_errors=True)

    run([cmake, "--install", binary_dir, "--prefix", prefix, "--component", "mnemo_client"])
    installed = sorted(os.path.relpath(os.path.join(d, f), prefix)
                       for d, _, files in os.walk(prefix) for f in files)
    assert "include/mnemo/client/mnemo_client.h" in installed, installed
    assert "include/mnemo/v1/mnemo.grpc.pb.h" in installed, installed
    assert "bin/mnemo-client" in installed, installed
    assert not [f for f in installed if "server" in f or "engine" in f], installed

    configure = [cmake, "-S", os.path.join(HERE, "consumer"), "-B", build,
                 f"-DCMAKE_PREFIX_PATH={prefix}", "-DCMAKE_BUILD_TYPE=Release"]
    if shutil.which("ninja"):
        configure += ["-G", "Ninja"]
    if os.environ.get("MNEMO_CXX_COMPILER"):
        configure.append(f"-DCMAKE_CXX_COMPILER={os.environ['MNEMO_CXX_COMPILER']}")
    if os.environ.get("MNEMO_CXX_LAUNCHER"):
        configure.append(f"-DCMAKE_CXX_COMPILER_LAUNCHER={os.environ['MNEMO_CXX_LAUNCHER']}")
    run(configure)
    run([cmake, "--build", build], timeout=600)

    consumer = run([os.path.join(build, "consumer"), server.target], timeout=120)
    assert consumer.stdout.startswith("model tiny;"), consumer.stdout
    assert "generated 4 tokens" in consumer.stdout, consumer.stdout

    # The installed command line runs too (it needs nothing but the shared libraries).
    models = subprocess.run([os.path.join(prefix, "bin", "mnemo-client"), "--target",
                             server.target, "models"], capture_output=True, text=True,
                            timeout=60)
    assert models.returncode == 0 and "tiny" in models.stdout, (models.stdout, models.stderr)
