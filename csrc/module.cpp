// The extension module cina_ext._C: the importable Python module, and the `cina` operator
// namespace.  Each op registers its own schemas and kernels in its folder's glue
// (csrc/attention_hinge/glue.cpp, csrc/qp_solve/glue.cpp: TORCH_LIBRARY_FRAGMENT /
// TORCH_LIBRARY_IMPL), which run as static initialisers when the library is loaded.
#include <Python.h>
#include <torch/library.h>

// An importable (empty) Python module: importing it loads the library, i.e. runs the
// registrations.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}

// Owns the namespace (a second TORCH_LIBRARY(cina) anywhere, e.g. another extension, is an error
// at load time); the schemas are the glue files' fragments.
TORCH_LIBRARY(cina, m) {}
