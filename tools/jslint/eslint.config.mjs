// ESLint's configuration for the page's scripts, app/ui/*.js (scripts/test runs it from the
// repository's root). Each file is one function that Gradio runs in the browser: a script,
// not a module, with the browser's globals and nothing else.
import js from "@eslint/js";
import globals from "globals";

export default [
  js.configs.recommended,
  {
    files: ["**/*.js"],
    languageOptions: {
      sourceType: "script",
      globals: globals.browser,
    },
    rules: {
      eqeqeq: "error",
      "no-var": "error",
      "prefer-const": "error",
    },
  },
];
