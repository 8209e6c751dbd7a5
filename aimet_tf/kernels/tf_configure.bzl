"""Repository rule exposing the pip-installed TensorFlow's C++ headers and framework library.

Custom ops must be compiled against the exact TensorFlow they are loaded into, so this rule asks
the Python interpreter for `tf.sysconfig.get_include()` / `get_lib()` and symlinks them; no
download happens. Use it from the WORKSPACE:

    load("//aimet_tf/kernels:tf_configure.bzl", "native_rules", "tf_configure")
    [native_rules(name = n) for n in ["rules_cc", "rules_java", "rules_proto", "rules_python", "remote_coverage_tools"]]
    tf_configure(name = "local_tensorflow")
"""

_BUILD = """
cc_library(
    name = "tf_headers",
    hdrs = glob(["include/**/*.h", "include/**/*.inc", "include/**/*.hpp", "include/Eigen/**", "include/unsupported/Eigen/**"]),
    includes = ["include"],
    visibility = ["//visibility:public"],
)

cc_library(
    name = "tf_framework",
    srcs = ["lib/libtensorflow_framework.so.2"],
    visibility = ["//visibility:public"],
)
"""

def _tf_configure_impl(ctx):
    python = ctx.os.environ.get("PYTHON_BIN_PATH", "python3")
    result = ctx.execute([python, "-c", "import tensorflow as tf; print(tf.sysconfig.get_include()); print(tf.sysconfig.get_lib())"])
    if result.return_code != 0:
        fail("tf_configure: `%s -c 'import tensorflow'` failed; install tensorflow==2.21.* for that interpreter " % python +
             "or set PYTHON_BIN_PATH.\n" + result.stderr)
    include, lib = result.stdout.strip().splitlines()[-2:]
    ctx.symlink(include, "include")
    ctx.symlink(lib + "/libtensorflow_framework.so.2", "lib/libtensorflow_framework.so.2")
    ctx.file("BUILD", _BUILD)

tf_configure = repository_rule(
    implementation = _tf_configure_impl,
    environ = ["PYTHON_BIN_PATH"],
    local = True,
)

# Offline stand-ins for the rule repositories that Bazel 4's built-in toolchains load (and would
# otherwise download from GitHub): each re-exports the native rules of the same name.
_NATIVE_FORWARDS = {
    "rules_cc": ("cc", ["cc_binary", "cc_import", "cc_library", "cc_proto_library", "cc_test", "cc_toolchain",
                        "cc_toolchain_suite", "objc_library"]),
    "rules_java": ("java", ["java_binary", "java_import", "java_library", "java_runtime", "java_test",
                            "java_toolchain"]),
    "rules_proto": ("proto", ["proto_lang_toolchain", "proto_library"]),
}

_PYTHON_DEFS = """
load("@bazel_tools//tools/python:toolchain.bzl", _py_runtime_pair = "py_runtime_pair")

py_runtime_pair = _py_runtime_pair

def py_binary(**kwargs):
    native.py_binary(**kwargs)

def py_library(**kwargs):
    native.py_library(**kwargs)

def py_runtime(**kwargs):
    native.py_runtime(**kwargs)

def py_test(**kwargs):
    native.py_test(**kwargs)
"""

def _native_rules_impl(ctx):
    ctx.file("WORKSPACE", "workspace(name = \"%s\")\n" % ctx.name)
    ctx.file("BUILD", "")
    if ctx.name == "remote_coverage_tools":
        # Every test rule depends on the coverage report generator (a download); `bazel coverage`
        # is not supported offline, `bazel test` never runs it.
        ctx.file("coverage_report_generator.sh", "echo 'coverage is not available offline' >&2; exit 1\n", executable = True)
        ctx.file("BUILD", 'sh_binary(name = "coverage_report_generator", srcs = ["coverage_report_generator.sh"], ' +
                          'visibility = ["//visibility:public"])\n')
        return
    if ctx.name == "rules_python":
        package, text = "python", _PYTHON_DEFS
    else:
        package, rules = _NATIVE_FORWARDS[ctx.name]
        text = "".join(["def %s(**kwargs):\n    native.%s(**kwargs)\n\n" % (r, r) for r in rules])
    ctx.file(package + "/BUILD", "")
    ctx.file(package + "/defs.bzl", text)

native_rules = repository_rule(
    implementation = _native_rules_impl,
    local = True,
    doc = "Declares @rules_cc / @rules_java / @rules_proto / @rules_python as Bazel's native rules, and a " +
          "stub @remote_coverage_tools, so that nothing is downloaded.",
)
