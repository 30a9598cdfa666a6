// Bundles the admin UI into the file the server embeds (crates/herald-server/assets/admin/app.js).
// `--check`: build in memory and fail if the embedded file is not what the sources give.
import { bundle } from '../scripts/bundle.mjs';

await bundle('admin');
