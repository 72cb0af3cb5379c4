// Builds dist/spoor.mjs (ES module) and dist/spoor.iife.js (script tag, defines window.spoor).
import { build } from 'esbuild';

const common = { bundle: true, minify: true, target: ['es2020'], legalComments: 'none', logLevel: 'warning' };
await Promise.all([
  build({ ...common, entryPoints: ['src/index.ts'], format: 'esm', outfile: 'dist/spoor.mjs' }),
  build({ ...common, entryPoints: ['src/iife.ts'], format: 'iife', outfile: 'dist/spoor.iife.js' }),
]);
