//! The weekly summary's chart: the battery level over the week as a 600×300 PNG, drawn
//! by a few lines of rasterising and encoded with the `png` crate (no fonts, no system
//! libraries; a plotting crate's bitmap backend would bring an image codec stack for
//! the same picture). Made to be read on a phone: a thick line, large dots, a shaded
//! "critical" band below 20 and a grid line every 20; the numbers are in the mail's text.

/// Width and height in pixels.
pub const WIDTH: u32 = 600;
pub const HEIGHT: u32 = 300;
/// The plot area inside the margins.
const LEFT: f32 = 24.0;
const RIGHT: f32 = 24.0;
const TOP: f32 = 20.0;
const BOTTOM: f32 = 36.0;
const LINE_WIDTH: f32 = 7.0;
const DOT_RADIUS: f32 = 9.0;

pub const BACKGROUND: [u8; 3] = [0xff, 0xff, 0xff];
pub const CRITICAL_BAND: [u8; 3] = [0xfb, 0xe4, 0xe4];
pub const GRID: [u8; 3] = [0xe2, 0xdf, 0xe8];
pub const AXIS: [u8; 3] = [0x7a, 0x75, 0x80];
pub const LINE: [u8; 3] = [0x5b, 0x4b, 0x8a];

struct Canvas {
    pixels: Vec<u8>,
}

impl Canvas {
    fn new() -> Self {
        Self {
            pixels: BACKGROUND.repeat((WIDTH * HEIGHT) as usize),
        }
    }

    fn put(&mut self, x: i64, y: i64, colour: [u8; 3]) {
        if (0..i64::from(WIDTH)).contains(&x) && (0..i64::from(HEIGHT)).contains(&y) {
            let at = ((y as usize) * WIDTH as usize + x as usize) * 3;
            self.pixels[at..at + 3].copy_from_slice(&colour);
        }
    }

    fn rect(&mut self, x0: f32, y0: f32, x1: f32, y1: f32, colour: [u8; 3]) {
        for y in y0.round() as i64..y1.round() as i64 {
            for x in x0.round() as i64..x1.round() as i64 {
                self.put(x, y, colour);
            }
        }
    }

    /// Every pixel whose centre lies within `width / 2` of the segment: a thick line
    /// with round ends (so joints between segments are round too).
    fn segment(&mut self, (ax, ay): (f32, f32), (bx, by): (f32, f32), width: f32, colour: [u8; 3]) {
        let r = width / 2.0;
        let (dx, dy) = (bx - ax, by - ay);
        let length2 = (dx * dx + dy * dy).max(f32::EPSILON);
        let (x0, x1) = (ax.min(bx) - r, ax.max(bx) + r);
        let (y0, y1) = (ay.min(by) - r, ay.max(by) + r);
        for y in y0.floor() as i64..=y1.ceil() as i64 {
            for x in x0.floor() as i64..=x1.ceil() as i64 {
                let (px, py) = (x as f32 + 0.5, y as f32 + 0.5);
                let t = (((px - ax) * dx + (py - ay) * dy) / length2).clamp(0.0, 1.0);
                let (cx, cy) = (ax + t * dx - px, ay + t * dy - py);
                if cx * cx + cy * cy <= r * r {
                    self.put(x, y, colour);
                }
            }
        }
    }

    fn dot(&mut self, centre: (f32, f32), radius: f32, colour: [u8; 3]) {
        self.segment(centre, centre, radius * 2.0, colour);
    }
}

/// Where level `level` of point `index` (of `count`) is drawn.
pub fn position(index: usize, count: usize, level: u8) -> (f32, f32) {
    let span = (count.max(2) - 1) as f32;
    let x = LEFT + (WIDTH as f32 - LEFT - RIGHT) * index as f32 / span;
    let y = TOP + (HEIGHT as f32 - TOP - BOTTOM) * (1.0 - f32::from(level.min(100)) / 100.0);
    (x, y)
}

/// The chart of `levels`, evenly spaced left to right (the week's opening level and its
/// seven daily closing levels); `None` is a point without data (no line through it).
pub fn render(levels: &[Option<u8>]) -> Vec<u8> {
    let mut canvas = Canvas::new();
    let (plot_left, plot_right) = (LEFT, WIDTH as f32 - RIGHT);
    let bottom = HEIGHT as f32 - BOTTOM;
    let (_, critical_top) = position(0, 2, 20);
    canvas.rect(plot_left, critical_top, plot_right, bottom, CRITICAL_BAND);
    for level in [20, 40, 60, 80, 100] {
        let (_, y) = position(0, 2, level);
        canvas.rect(plot_left, y - 1.0, plot_right, y + 1.0, GRID);
    }
    // The axis, and a tall tick per point (a day boundary).
    canvas.rect(plot_left, bottom, plot_right, bottom + 3.0, AXIS);
    for index in 0..levels.len() {
        let (x, _) = position(index, levels.len(), 0);
        canvas.rect(x - 1.5, bottom, x + 1.5, bottom + 14.0, AXIS);
    }
    let points: Vec<Option<(f32, f32)>> = levels
        .iter()
        .enumerate()
        .map(|(i, level)| level.map(|l| position(i, levels.len(), l)))
        .collect();
    for pair in points.windows(2) {
        if let [Some(a), Some(b)] = pair {
            canvas.segment(*a, *b, LINE_WIDTH, LINE);
        }
    }
    for point in points.iter().flatten() {
        canvas.dot(*point, DOT_RADIUS, LINE);
    }
    encode(&canvas.pixels)
}

fn encode(pixels: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, WIDTH, HEIGHT);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Balanced);
    // Writing into a Vec cannot fail, and the size and colour type are fixed above.
    let mut writer = encoder.write_header().expect("a PNG header into memory");
    writer
        .write_image_data(pixels)
        .expect("PNG data into memory");
    writer.finish().expect("a PNG into memory");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(bytes: &[u8]) -> (png::OutputInfo, Vec<u8>) {
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = decoder.read_info().unwrap();
        let mut buffer = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buffer).unwrap();
        (info, buffer)
    }

    fn pixel(buffer: &[u8], (x, y): (f32, f32)) -> [u8; 3] {
        let at = ((y as usize) * WIDTH as usize + x as usize) * 3;
        [buffer[at], buffer[at + 1], buffer[at + 2]]
    }

    #[test]
    fn the_chart_is_a_600_by_300_png_with_a_dot_at_each_level() {
        let levels = [
            Some(70),
            Some(55),
            Some(15),
            None,
            Some(90),
            Some(90),
            Some(40),
            Some(0),
        ];
        let bytes = render(&levels);
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        assert!(bytes.len() < 30_000, "{} bytes", bytes.len());
        let (info, buffer) = decode(&bytes);
        assert_eq!((info.width, info.height), (WIDTH, HEIGHT));
        for (i, level) in levels.iter().enumerate() {
            let at = position(i, levels.len(), level.unwrap_or(50));
            match level {
                Some(_) => assert_eq!(pixel(&buffer, at), LINE, "point {i}"),
                // No data: nothing drawn there (grid or background).
                None => assert_ne!(pixel(&buffer, at), LINE, "point {i}"),
            }
        }
        // The critical band is shaded below 20, away from the line.
        let (x, _) = position(1, levels.len(), 0);
        let (_, y) = position(1, levels.len(), 10);
        assert_eq!(pixel(&buffer, (x, y)), CRITICAL_BAND);
    }
}
