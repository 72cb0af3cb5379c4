// dist/analytics-next.iife.js: @segment/analytics-next bundled for a page the way a site's bundler
// would (its dynamically imported parts inlined). The package's standalone build, which the classic
// snippet loads as analytics.min.js, is served as shipped: node_modules/@segment/analytics-next/dist/umd.
import { build } from 'esbuild';

await build({
  entryPoints: ['entry.js'],
  bundle: true,
  format: 'iife',
  target: ['es2020'],
  outfile: 'dist/analytics-next.iife.js',
  define: { 'process.env.NODE_ENV': '"production"' },
  logLevel: 'warning',
});
